//! `tuwunel-loadtest`: load tests for any Matrix homeserver, through the standard
//! Client-Server API only, so results for different servers compare like with like.
//!
//! One scenario per run (see `cli`); the run prints a table, and optionally writes a JSON
//! report and SVG latency histograms. `--compare A B` compares two JSON reports.
//! Exit status: 0 when the scenario ran and its verification passed, 2 when it ran but
//! acknowledged events were missing or not delivered, 1 on errors.

mod cli;
mod client;
mod error;
mod progress;
mod report;
mod sampler;
mod scenarios;
mod stats;
mod svg;
mod tasks;
mod world;

use std::{
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use rand::{Rng, distributions::Alphanumeric};

use crate::{
    cli::Cli,
    client::Api,
    error::{Error, Result},
    report::{Report, ServerInfo},
    scenarios::Ctx,
    world::World,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(paths) = &cli.compare {
        let [a, b] = paths.as_slice() else {
            eprintln!("tuwunel-loadtest: --compare takes two report files");
            return ExitCode::from(1);
        };
        return match report::compare(a, b) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tuwunel-loadtest: {error}");
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tuwunel-loadtest: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tuwunel-loadtest: verification FAILED (missing or undelivered events)");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("tuwunel-loadtest: {error}");
            ExitCode::from(1)
        }
    }
}

/// Asks the server who it is: client API versions, and the federation version endpoint if
/// it answers there.
async fn server_info(api: &Api, pid: Option<u32>) -> Result<ServerInfo> {
    let versions = api.versions().await.map_err(|error| {
        error.context("the server does not answer GET /_matrix/client/versions")
    })?;
    let federation = api.federation_version().await.ok();
    let text = |key: &str| {
        federation.as_ref().and_then(|body| body["server"][key].as_str()).map(str::to_owned)
    };
    Ok(ServerInfo {
        versions: versions["versions"]
            .as_array()
            .map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        name: text("name"),
        version: text("version"),
        pid,
    })
}

async fn run(cli: Cli) -> Result<bool> {
    let url_text = cli.url.clone().ok_or_else(|| Error::new("--url is required"))?;
    let url = cli::check_url(&url_text, cli.allow_non_loopback)?;
    let scenario = cli.scenario.clone().ok_or_else(|| {
        Error::new(
            "choose a scenario: send, fanout, many-rooms, initial-sync, join, create-rooms, \
             media or idle-polls (see --help)",
        )
    })?;
    let base = url.as_str().trim_end_matches('/').to_owned();
    let api = Api::new(&base, Duration::from_secs(cli.request_timeout.max(1)), cli.max_retries)?;
    let server = server_info(&api, cli.server_pid).await?;
    if let Some(pid) = cli.server_pid {
        sampler::read(pid).map_err(|error| error.context("--server-pid"))?;
    }
    let run_id: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(8).map(char::from).collect();
    let ctx = Ctx::new(
        api.clone(),
        url.clone(),
        cli.registration_token.clone(),
        cli.setup_concurrency,
        Instant::now() + Duration::from_secs(cli.max_setup_duration),
        Duration::from_secs(cli.max_duration.max(1)),
        cli.server_pid,
        run_id,
    );
    let mut world = World::load(cli.world_dir.as_deref(), &base)?;
    world.validate(&ctx).await?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    progress::note(&format!(
        "{} against {base} ({})",
        scenario.name(),
        server.name.clone().unwrap_or_else(|| "server name unknown".to_owned())
    ));
    let result = scenarios::run(&ctx, &mut world, &scenario).await;
    // Whatever happened, keep what setup created.
    world.save()?;
    let mut result = result?;
    result.rate_limited_retries = api.counters.rate_limited.load(Ordering::Relaxed);
    let passed = result.passed();
    let report = Report {
        harness: "tuwunel-loadtest".to_owned(),
        harness_version: env!("CARGO_PKG_VERSION").to_owned(),
        url: base.clone(),
        timestamp_unix: started,
        timestamp: report::rfc3339(started),
        command_line: std::env::args().collect(),
        server,
        scenarios: vec![result],
    };
    print!("{}", report::table(&report));
    if let Some(path) = &cli.report {
        report::write_json(&report, path)?;
        progress::note(&format!("report written to {}", path.display()));
    }
    if let Some(dir) = &cli.svg_dir {
        let label = match (&report.server.name, &report.server.version) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            _ => base.clone(),
        };
        for scenario in &report.scenarios {
            for path in svg::write_all(dir, &label, scenario)? {
                progress::note(&format!("histogram written to {path}"));
            }
        }
    }
    Ok(passed)
}
