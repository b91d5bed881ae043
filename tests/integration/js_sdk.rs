//! matrix-js-sdk (Element Web's engine, with its Rust crypto) doing what Element Web does,
//! against our server and against a real Synapse: a step that works on Synapse must work
//! here. The scenario is `tests/clients/js/element_web.mjs`; the reference decides what
//! "works" means, so a step that fails on both is reported but does not fail the test.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    common::TestServer,
    synapse::{Synapse, SynapseConfig},
};

/// Longest a whole scenario may run (it takes about ten seconds).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// One step as the scenario reported it.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    ok: bool,
    error: String,
}

/// What one run of the scenario printed: its steps, and whether it reached the end.
#[derive(Debug)]
struct Run {
    steps: Vec<Step>,
    finished: bool,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

impl Run {
    fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.name == name)
    }
}

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/js")
}

/// Runs the scenario against `base_url` with a bounded time.
async fn run_scenario(base_url: String) -> Run {
    let dir = scenario_dir();
    assert!(
        dir.join("node_modules/matrix-js-sdk").exists(),
        "matrix-js-sdk is not installed in {} (./dev.sh test runs npm ci there)",
        dir.display()
    );
    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let stdout_path = scratch.path().join("stdout");
        let stderr_path = scratch.path().join("stderr");
        let started = Instant::now();
        let mut child = Command::new("node")
            .arg("element_web.mjs")
            .arg(&base_url)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("node runs (Node.js 20 or later)");
        let deadline = started + SCENARIO_TIMEOUT;
        loop {
            if child.try_wait().expect("waiting for node").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let elapsed = started.elapsed();
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let steps = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("STEP "))
            .filter_map(|json| serde_json::from_str::<Value>(json).ok())
            .map(|step| Step {
                name: step["name"].as_str().unwrap_or_default().to_owned(),
                ok: step["ok"].as_bool().unwrap_or(false),
                error: step["error"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let finished = stdout.lines().any(|line| line.starts_with("DONE "));
        Run { steps, finished, elapsed, stdout, stderr }
    })
    .await
    .expect("scenario task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_web_steps_work_here_as_they_do_on_synapse() {
    let mut ours = TestServer::start().await;
    let synapse = Synapse::start(SynapseConfig::default()).await;
    eprintln!("synapse ({}) started in {:?}", synapse.server_name, synapse.startup);
    let (here, reference) = tokio::join!(run_scenario(ours.url("")), run_scenario(synapse.url("")));
    eprintln!(
        "matrix-js-sdk scenario: {:?} against us, {:?} against Synapse",
        here.elapsed, reference.elapsed
    );
    assert!(
        reference.finished && !reference.steps.is_empty(),
        "the scenario did not finish against Synapse:\n{}\n{}",
        reference.stdout,
        reference.stderr
    );
    assert!(
        here.finished,
        "the scenario did not finish against our server:\n{}\n{}",
        here.stdout, here.stderr
    );
    let passed = |run: &Run| run.steps.iter().filter(|step| step.ok).count();
    eprintln!(
        "steps passed: {} of {} here, {} of {} on Synapse",
        passed(&here),
        here.steps.len(),
        passed(&reference),
        reference.steps.len()
    );
    let mut regressions = Vec::new();
    for step in &reference.steps {
        match here.step(&step.name) {
            Some(ours) if ours.ok || !step.ok => {}
            Some(ours) => regressions.push(format!("{}: {}", step.name, ours.error)),
            None => regressions.push(format!("{}: never ran here", step.name)),
        }
    }
    for step in reference.steps.iter().filter(|step| !step.ok) {
        eprintln!("fails on Synapse too (not held against us): {}: {}", step.name, step.error);
    }
    assert!(
        regressions.is_empty(),
        "{} of {} steps pass on Synapse but fail here:\n{}\n\nour run:\n{}",
        regressions.len(),
        reference.steps.len(),
        regressions.join("\n"),
        here.stdout
    );
    ours.stop().await;
}
