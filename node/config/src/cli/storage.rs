//! `--storage.*` and `--roles`: PostgreSQL shared by several nodes (leases, billing calls, send
//! intents, the paymaster's ledger, settlement) and what this node runs.

use super::*;

/// The store shared by several nodes.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// PostgreSQL shared by every node (`postgres://user:password@host/db`; `?host=/dir` for a
    /// unix socket). Unset: this node's own sled database alone.
    #[arg(
        long = "storage.url",
        id = "storage.url",
        env = "SETTLED_STORAGE_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Seconds a leader's lease lasts without renewal (it renews every third): how long a dead
    /// leader's role waits for another node.
    #[arg(
        long = "storage.lease-secs",
        id = "storage.lease-secs",
        env = "SETTLED_STORAGE_LEASE_SECS",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub lease_secs: f64,

    /// What this node runs, comma-separated: `bundler`, `paymaster`, `billing`, `settlement`.
    /// Default: all of them (on a shared store too: every role's state is shared).
    #[arg(
        long = "roles",
        id = "roles",
        env = "SETTLED_ROLES",
        value_name = "ROLES",
        value_delimiter = ','
    )]
    pub roles: Option<Vec<Role>>,
}

/// A role of `--roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The ERC-4337 bundler.
    Bundler,
    /// The gas-sponsoring paymaster.
    Paymaster,
    /// The stream index and the billing API.
    Billing,
    /// Settlement batches.
    Settlement,
}

impl StorageArgs {
    /// The shared store, when a URL is given.
    pub fn into_settings(self) -> Option<SharedStoreSettings> {
        let lease_ttl = Duration::try_from_secs_f64(self.lease_secs.max(0.2))
            .unwrap_or(Duration::from_secs(10));
        self.url.map(|url| SharedStoreSettings { url, lease_ttl })
    }

    /// The roles asked for, else the default for the store.
    pub fn roles(&self) -> Roles {
        let Some(roles) = &self.roles else {
            return Roles::ALL;
        };
        Roles {
            bundler: roles.contains(&Role::Bundler),
            paymaster: roles.contains(&Role::Paymaster),
            billing: roles.contains(&Role::Billing),
            settlement: roles.contains(&Role::Settlement),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_turns_the_shared_store_on() -> Result<(), clap::Error> {
        let none = super::super::tests::Only::<StorageArgs>::try_parse_from(["settled"])?;
        assert_eq!(none.group.into_settings(), NodeConfig::default().shared_store);
        let args = super::super::tests::Only::<StorageArgs>::try_parse_from([
            "settled",
            "--storage.url",
            "postgres://settled@db/settled",
            "--storage.lease-secs",
            "2",
        ])?;
        let settings = args.group.into_settings().ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, "no settings")
        })?;
        assert_eq!(settings.lease_ttl, Duration::from_secs(2));
        assert_eq!(settings.url, "postgres://settled@db/settled");
        Ok(())
    }

    #[test]
    fn roles_default_to_what_the_store_shares() -> Result<(), clap::Error> {
        let parse = |args: &[&str]| {
            let all = [&["settled"][..], args].concat();
            super::super::tests::Only::<StorageArgs>::try_parse_from(all).map(|a| a.group.roles())
        };
        assert_eq!(parse(&[])?, Roles::ALL);
        assert_eq!(parse(&["--storage.url", "postgres://db/s"])?, Roles::ALL);
        let billing = parse(&["--roles", "billing,settlement"])?;
        assert_eq!(
            billing,
            Roles { bundler: false, paymaster: false, billing: true, settlement: true }
        );
        assert!(parse(&["--roles", "mempool"]).is_err(), "an unknown role is refused");
        Ok(())
    }
}
