//! The session-start Lambda function: glue over `autouser_lambda`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    autouser_lambda::run(autouser_lambda::Function::SessionStart).await
}
