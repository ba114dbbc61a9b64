use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match shoal::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line: the message with its causes (no backtrace, whatever RUST_BACKTRACE says).
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
