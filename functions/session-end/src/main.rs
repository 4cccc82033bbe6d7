//! The session-end Lambda function: glue over `autouser_lambda`.

use autouser_lambda::{handle, Function, State};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    autouser_lambda::init_tracing();
    let state = State::from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| handle(&state, Function::SessionEnd, event)))
        .await
}
