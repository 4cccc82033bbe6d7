//! The reaper Lambda function: glue over `autouser_lambda::reaper`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    autouser_lambda::reaper::run().await
}
