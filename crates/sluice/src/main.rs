//! `sluice`: the one binary. Parses the command line and config, then hands over to a role
//! crate or the client library; no logic of its own beyond wiring.

mod cli;
mod client_cmds;
mod config;
mod edge;
mod live;
mod progress;
mod roles;
mod serve;
mod storage;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.command.is_client() {
        end_quietly_on_a_closed_pipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One readable line: the error and its causes.
            eprintln!("sluice: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Live(args) => live::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Tracker(args) => tracker::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Storage(args) => storage::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Edge(args) => edge::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Cluster(args) => client_cmds::cluster(args).await,
        cli::Command::Upload(args) => client_cmds::upload(args).await,
        cli::Command::Download(args) => client_cmds::download(args).await,
        cli::Command::Delete(args) => client_cmds::delete(args).await,
        cli::Command::Stat(args) => client_cmds::stat(args).await,
        cli::Command::Bench(args) => client_cmds::bench(args).await,
        cli::Command::Sign(args) => client_cmds::sign(args),
    }
}

/// A client command whose output is read by something that goes away (`sluice bench --json |
/// head`) ends there quietly, as Unix tools do, instead of panicking in `println!`. Server
/// roles keep SIGPIPE ignored: a client hanging up must never stop a server.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}
