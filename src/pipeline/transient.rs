//! Step 2 of the self-deploy, inside the transient container (`kua-deploy self-recreate`): the
//! same recreate, verify and rollback code as every deploy, over a [`Runtime`] of its own (there
//! is no store here; what it did is its exit status and its output, read by the process that
//! comes back). Exit status: 0 the new image runs and verified; 1 it did not and the previous
//! image runs again; 2 neither.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{recreate, rollback, secrets, verify, Runtime, StepOutcome};
use crate::config::{SecretsConfig, SecretsFormat};
use crate::git::Git;
use crate::host::{Host, LogSink, Stream};
use crate::model::Images;
use crate::selfupdate::TransientArgs;
use crate::target::compose::ComposeTarget;
use crate::target::{Limits, Target};

/// Prints every line, for `docker logs` of the transient container.
struct Print;

impl LogSink for Print {
    fn line(&self, _: Stream, text: &str) {
        println!("{text}");
    }
}

/// Recreates kua-deploy's service on the new image, verifies it, and rolls back if it does not hold.
pub async fn run(args: TransientArgs) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_default();
    let files = (!args.files.is_empty()).then(|| args.files.clone());
    let output = std::env::temp_dir().join("kua-self-recreate.log");
    let target = ComposeTarget::new(Host::local(), cwd.clone(), Some(args.project.clone()), files, output);
    let git = Git::new(Host::local(), cwd.clone());
    // Nobody cancels the transient container: it must end in a verdict.
    let never = CancellationToken::new();
    let rt = Runtime {
        target: &target,
        git: &git,
        limits: Limits { timeout: Duration::from_secs(args.timeout), stable: Duration::from_secs(args.stable) },
        cancel: &never,
        log: &Print,
        started: &|_| {},
    };
    let services = [args.service.clone()];
    if let Err(why) = fetch_secrets(&args, &target, &cwd).await {
        println!("{why}; nothing was recreated");
        return 2;
    }
    println!("recreating {} with {}", args.service, args.image);
    let new: Images = [(args.service.clone(), args.image.clone())].into();
    // The checkout is the new commit's: its configuration is the one the new image runs with.
    let failed = match target.resolve(&services, &never, &Print).await {
        Err(e) => format!("cannot read the Compose configuration: {e}"),
        Ok(_) => match recreate::apply(&rt, &new).await {
            Err(stop) => describe(stop),
            Ok(()) => match verify::watch(&rt, &new, &args.since).await {
                Err(stop) => describe(stop),
                Ok(v) => match verify::outcome(&v, args.stable) {
                    StepOutcome::Succeeded(detail) => {
                        println!("verified: {} runs {}: {detail}", args.service, args.image);
                        return 0;
                    }
                    other => describe(other),
                },
            },
        },
    };
    println!("the new image did not verify: {failed}");
    let Some(previous) = args.previous else {
        println!("nothing ran before; nothing to bring back");
        return 2;
    };
    println!("bringing back {previous}");
    let back_to = args.previous_commit.zip(args.branch).map(|(c, b)| (b, c));
    let old: Images = [(args.service.clone(), previous.clone())].into();
    match rollback::restore(&rt, &services, &old, back_to.as_ref()).await {
        StepOutcome::Succeeded(detail) => {
            println!("rolled back: {detail}");
            1
        }
        other => {
            println!("the previous image did not verify either: {}", describe(other));
            2
        }
    }
}

/// Fetches the app's secrets, as the deploy's `secrets` step did, and hands them to the target.
async fn fetch_secrets(args: &TransientArgs, target: &ComposeTarget, cwd: &std::path::Path) -> Result<(), String> {
    let (Some(command), Some(app)) = (&args.secrets_command, &args.app) else { return Ok(()) };
    let command: Vec<String> =
        serde_json::from_str(command).map_err(|e| format!("--secrets-command is not a JSON list: {e}"))?;
    if command.is_empty() {
        return Err("--secrets-command is empty".into());
    }
    let format = if args.secrets_format == "json" { SecretsFormat::Json } else { SecretsFormat::Dotenv };
    let config = SecretsConfig { command, format, timeout_s: args.secrets_timeout };
    let vars = secrets::fetch(&Host::local(), &config, app, cwd, &CancellationToken::new())
        .await
        .map_err(|e| format!("cannot fetch the secrets: {e}"))?;
    println!("fetched the secrets: {}", vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "));
    target.use_secrets(&vars);
    Ok(())
}

fn describe(outcome: StepOutcome) -> String {
    match outcome {
        StepOutcome::Failed(why) | StepOutcome::NotStarted(why) => why,
        other => format!("{other:?}"),
    }
}
