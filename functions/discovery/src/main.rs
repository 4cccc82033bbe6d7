//! The discovery Lambda function: glue over `autouser_lambda::discovery`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    autouser_lambda::discovery::run().await
}
