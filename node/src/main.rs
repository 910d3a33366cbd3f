//! `settled`: parse the command line, set up logging, run the node until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::error::ErrorKind;
use settled_node::{
    Action, Cli, CliError, LogConfig, PaymasterCommandConfig, launch, run_paymaster_command,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt};

fn main() -> ExitCode {
    let cli = match Cli::parse_with_config(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliError::Clap(err))
            if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(CliError::Clap(err)) => {
            // clap's first paragraph names the problem; the usage block after it is noise here.
            let text = err.render().to_string();
            let first: Vec<&str> =
                text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            eprintln!("{} (see `settled --help`)", first.join(" "));
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let (config, source, log) = match cli.into_action() {
        Action::Node(config, source, log) => (*config, source, log),
        Action::Paymaster(command) => return paymaster_command(command),
        Action::Deploy(command) => return deploy_command(command),
        Action::Invoice(command) => return invoice_command(&command),
        Action::VerifyReceipt { rpc_url, anchor_rpc_url, receipt } => {
            return verify_receipt_command(&rpc_url, &anchor_rpc_url, receipt.as_deref());
        }
    };
    let json_logs = log.json;
    if let Err(err) = init_logging(&log) {
        eprintln!("error: --log.filter: {err}");
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let cancel = CancellationToken::new();
        // The handlers are in place before anything starts: a SIGTERM during start-up or right
        // after "settled ready" stops the node (and the Anvil it started) cleanly, instead of
        // killing the process with the dev Anvil left running.
        tokio::spawn(cancel_on(shutdown_signal(), cancel.clone()));
        let node = launch(config, source, cancel.clone()).await?;
        node.stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if json_logs {
                tracing::error!(%err, "settled failed");
            }
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `settled paymaster ...`: one command, its result as JSON on stdout.
fn paymaster_command(command: PaymasterCommandConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_paymaster_command(command)) {
        Ok(output) => match serde_json::to_string_pretty(&output) {
            Ok(text) => {
                print_out(&text);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `settled deploy`: the plan (and what was sent) as JSON on stdout; exit 1 when a dry run
/// finds a canonical EntryPoint missing (the plan cannot run) or the deployment fails.
fn deploy_command(command: settled_node::DeployCommandConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(settled_node::run_deploy_command(command)) {
        Ok(output) => {
            print_out(&serde_json::to_string_pretty(&output).unwrap_or_default());
            let missing = output.plan.missing_entry_points();
            if missing.is_empty() {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "error: {} not at the canonical address on this chain; settled does not deploy EntryPoints",
                missing.join(" and ")
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `settled invoice`: the document on standard output or in `--out`; exit 1 when the node
/// refuses (its message and code on standard error).
fn invoice_command(command: &settled_node::InvoiceCommandConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let document = match runtime.block_on(settled_node::run_invoice_command(command)) {
        Ok(document) => document,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match &command.out {
        Some(path) => match std::fs::write(path, document) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}: {err}", path.display());
                ExitCode::FAILURE
            }
        },
        None => {
            print_out(document.trim_end());
            ExitCode::SUCCESS
        }
    }
}

/// `settled verify-receipt`: the checks as JSON on stdout; exit 1 for an invalid receipt, 2 when
/// it could not be read or checked.
fn verify_receipt_command(
    rpc_url: &str,
    anchor_rpc_url: &str,
    file: Option<&std::path::Path>,
) -> ExitCode {
    use std::io::Read as _;
    let mut text = String::new();
    let read = match file {
        Some(path) => std::fs::read_to_string(path).map(|t| text = t),
        None => std::io::stdin().read_to_string(&mut text).map(|_| ()),
    };
    if let Err(err) = read {
        eprintln!("error: reading the receipt: {err}");
        return ExitCode::from(2);
    }
    let receipt: settled_settlement::SettlementReceipt = match serde_json::from_str(&text) {
        Ok(receipt) => receipt,
        Err(err) => {
            eprintln!("error: not a settlement receipt: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        use alloy::providers::Provider as _;
        let connect = |url: &str| {
            let url =
                url.parse().map_err(|e| settled_settlement::ReceiptError::Chain(format!("{e}")))?;
            Ok::<_, settled_settlement::ReceiptError>(
                alloy::providers::ProviderBuilder::new().connect_http(url).erased(),
            )
        };
        let (streams, anchor) = (connect(rpc_url)?, connect(anchor_rpc_url)?);
        settled_settlement::verify_receipt(&streams, &anchor, &receipt).await
    });
    match result {
        Ok(verified) => {
            print_out(&serde_json::to_string_pretty(&verified).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(settled_settlement::ReceiptError::Invalid(reason)) => {
            print_out(&serde_json::json!({ "valid": false, "reason": reason }).to_string());
            eprintln!("invalid receipt: {reason}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Writes `text` and a newline to stdout. A reader that went away (`… | head`) is not an error
/// (`println!` would panic on the broken pipe).
fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn init_logging(log: &LogConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(&log.filter)?;
    // Colours only for a person at a terminal: a pipe or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log reader that goes away (`settled dev 2>&1 | head`) must not stop the node: the
    // default reports a failed write with `eprintln!`, which panics on a closed stderr.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    if log.json { builder.json().try_init() } else { builder.try_init() }
}

/// SIGINT or SIGTERM, with the handlers registered now (a `ctrl_c()` future registers only when
/// first polled, and a spawned task may run after the node is up).
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        async move {
            let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
                let s = s.take();
                async move {
                    match s {
                        Some(mut s) => {
                            s.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                }
            };
            tokio::select! {
                _ = recv(&mut int) => "SIGINT",
                _ = recv(&mut term) => "SIGTERM",
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Cancels `cancel` once `signal` arrives.
async fn cancel_on(
    signal: impl std::future::Future<Output = &'static str>,
    cancel: CancellationToken,
) {
    let signal = signal.await;
    tracing::info!("{signal}: shutting down");
    cancel.cancel();
}
