//! `--metrics.*`: the Prometheus endpoint.

use super::*;

/// The Prometheus endpoint.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Prometheus listen address.
    #[arg(long = "metrics.addr", id = "metrics.addr", env = "SETTLED_METRICS_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub addr: IpAddr,

    /// Prometheus port (0: a free port).
    #[arg(long = "metrics.port", id = "metrics.port", env = "SETTLED_METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub port: u16,

    /// Do not serve Prometheus metrics.
    #[arg(long = "metrics.disable", id = "metrics.disable", env = "SETTLED_METRICS_DISABLE")]
    pub disable: bool,
}

impl MetricsArgs {
    /// Where `/metrics` is served, unless disabled.
    pub fn into_addr(self) -> Option<SocketAddr> {
        (!self.disable).then(|| SocketAddr::new(self.addr, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<MetricsArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_addr(), NodeConfig::default().metrics);
        Ok(())
    }
}
