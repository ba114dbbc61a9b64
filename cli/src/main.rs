use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal::Cli::parse().run().await
}
