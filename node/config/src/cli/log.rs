//! `--log.*`: logging (applied by the binary).

use super::*;

/// Logging (applied by the binary).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long = "log.json", id = "log.json", env = "SETTLED_LOG_JSON")]
    pub json: bool,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,settled_contracts=debug`.
    #[arg(long = "log.filter", id = "log.filter", env = "SETTLED_LOG", default_value = "info")]
    pub filter: String,
}

impl LogArgs {
    /// The log settings.
    pub fn into_config(self) -> LogConfig {
        LogConfig { json: self.json, filter: self.filter }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<LogArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_config(), LogConfig { json: false, filter: "info".into() });
        Ok(())
    }
}
