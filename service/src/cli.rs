//! Command-line arguments every component binary accepts.

use std::path::PathBuf;

/// Flatten into a component's clap parser with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Path to the YAML config file
    #[arg(long, short = 'c', env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn config_flag_parses_long_and_short() {
        let cli = Cli::try_parse_from(["x", "--config", "/etc/a.yaml"]).unwrap();
        assert_eq!(cli.common.config, Some(PathBuf::from("/etc/a.yaml")));
        let cli = Cli::try_parse_from(["x", "-c", "b.yaml"]).unwrap();
        assert_eq!(cli.common.config, Some(PathBuf::from("b.yaml")));
    }
}
