//! A throwaway PostgreSQL for tests: Debian's server binaries, a fresh cluster in a temp dir
//! owned by the `postgres` user (`initdb` refuses root), listening only on a unix socket there;
//! stopped (immediate mode) on drop. `scripts/test.sh` installs `postgresql` when missing.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TestResult;

/// A running test cluster.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    ids: (u32, u32),
    server: Option<Child>,
    /// Listening on 127.0.0.1 too (TLS clusters).
    tcp: bool,
}

/// The directory of Debian's server binaries (`/usr/lib/postgresql/<major>/bin`).
fn server_bin() -> TestResult<PathBuf> {
    let mut majors: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed (apt-get install postgresql): {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    majors.sort();
    majors.pop().ok_or_else(|| "no /usr/lib/postgresql/*/bin/postgres".into())
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> TestResult<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).ok_or("no postgres user")?;
    let fields: Vec<&str> = line.split(':').collect();
    Ok((fields[2].parse()?, fields[3].parse()?))
}

/// A throwaway CA and a certificate for `localhost` it signed, in `data` (`server.crt`,
/// `server.key`, owned by the server's user); the CA certificate's path.
fn tls_files(data: &Path, ids: (u32, u32)) -> TestResult<PathBuf> {
    let openssl = |args: &[&str]| -> TestResult {
        let out = Command::new("openssl").args(args).current_dir(data).output()?;
        if !out.status.success() {
            return Err(
                format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into()
            );
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=settled test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req", "-subj", "/CN=localhost"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    )?;
    std::fs::write(
        data.join("san.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ])?;
    for file in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(file), Some(ids.0), Some(ids.1))?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
    Ok(data.join("ca.crt"))
}

impl TestPostgres {
    /// A new cluster, running.
    pub fn start() -> TestResult<Self> {
        let (bin, ids) = (server_bin()?, postgres_ids()?);
        let dir = tempfile::Builder::new().prefix("settled-pg-").tempdir()?;
        std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))?;
        let init = Command::new(bin.join("initdb"))
            .args(["-U", "settled", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .uid(ids.0)
            .gid(ids.1)
            .output()?;
        if !init.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&init.stderr)).into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut postgres = Self { dir, bin, port, ids, server: None, tcp: false };
        postgres.run()?;
        Ok(postgres)
    }

    /// A new cluster that also listens on 127.0.0.1 and takes TCP connections only over TLS,
    /// with a certificate for `localhost` from a throwaway CA; the CA certificate's path, for
    /// `sslrootcert=`.
    pub fn start_tls() -> TestResult<(Self, PathBuf)> {
        let mut postgres = Self::start()?;
        let data = postgres.dir.path().join("data");
        let ca = tls_files(&data, postgres.ids)?;
        // TCP only over TLS: `hostssl` lines instead of `host` ones.
        let hba = std::fs::read_to_string(data.join("pg_hba.conf"))?;
        let hba: Vec<String> = hba
            .lines()
            .map(|l| if l.starts_with("host ") { format!("hostssl{}", &l[4..]) } else { l.into() })
            .collect();
        std::fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n")?;
        let conf = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
        let mut file =
            std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        postgres.kill()?;
        postgres.tcp = true;
        postgres.run()?;
        Ok((postgres, ca))
    }

    /// The URL of a TLS connection over TCP, checking the server's certificate against `ca`.
    pub fn tls_url(&self, ca: &Path) -> String {
        format!(
            "postgres://settled@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// Starts the server on the existing cluster and waits for its socket.
    pub fn run(&mut self) -> TestResult {
        let child = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                if self.tcp { "listen_addresses=127.0.0.1" } else { "listen_addresses=" },
                "-c",
                "max_connections=60",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .uid(self.ids.0)
            .gid(self.ids.1)
            .spawn()?;
        self.server = Some(child);
        let socket = self.dir.path().join(format!(".s.PGSQL.{}", self.port));
        for _ in 0..200 {
            if socket.exists() && self.ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("PostgreSQL did not come up in 10 s".into())
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "settled", "-d", "postgres", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The connection URL (unix socket).
    pub fn url(&self) -> String {
        format!(
            "postgres://settled@localhost:{}/postgres?host={}",
            self.port,
            self.socket_dir().display()
        )
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server abruptly (SIGKILL to the postmaster; its backends follow), as a crash.
    pub fn kill(&mut self) -> TestResult {
        if let Some(mut child) = self.server.take() {
            child.kill()?;
            child.wait()?;
            // Backends exit once they notice the postmaster died; wait for the socket to go.
            let _ = std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}", self.port)));
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // Immediate shutdown (SIGQUIT): the postmaster stops its backends first.
            let _ = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status();
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
