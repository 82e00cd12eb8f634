//! Step 2, inside the transient container (`kua-deploy self-recreate`): the same target, apply and
//! verify as every deploy — recreate on the new image, verify, and bring the previous image (and
//! the previous commit's configuration) back if it does not hold.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::git::Git;
use crate::host::{Host, LogSink, Stream};
use crate::model::{now_rfc3339, BranchName, CommitSha, ImageId, Images, ProjectName, ServiceName};
use crate::target::compose::ComposeTarget;
use crate::target::{Limits, Target};

/// `kua-deploy self-recreate` options: what the transient container does.
#[derive(Debug, Clone, clap::Args)]
pub struct TransientArgs {
    #[arg(long)]
    pub project: ProjectName,
    #[arg(long)]
    pub service: ServiceName,
    #[arg(long)]
    pub image: ImageId,
    #[arg(long)]
    pub previous: Option<ImageId>,
    /// The commit whose Compose configuration ran with `previous`: checked out before it comes back.
    #[arg(long, requires = "branch")]
    pub previous_commit: Option<CommitSha>,
    #[arg(long)]
    pub branch: Option<BranchName>,
    /// When the deploy recorded the recreate as begun (RFC 3339).
    #[arg(long)]
    pub since: String,
    /// The Compose files; none: Compose discovers them in the checkout.
    #[arg(long = "file")]
    pub files: Vec<String>,
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long, default_value_t = 5)]
    pub stable: u64,
}

/// Prints every line, for `docker logs` of the transient container.
pub(super) struct Print;

impl LogSink for Print {
    fn line(&self, _: Stream, text: &str) {
        println!("{text}");
    }
}

/// Step 2, inside the transient container: recreate, verify, and roll back if it does not hold.
/// Exit status: 0 the new image runs; 1 rolled back to the previous one; 2 neither.
pub async fn run_transient(args: TransientArgs) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_default();
    let files = (!args.files.is_empty()).then(|| args.files.clone());
    let output = std::env::temp_dir().join("kua-self-recreate.log");
    // The same target, apply and verify as every deploy's recreate, verify and rollback.
    let target = ComposeTarget::new(Host::local(), cwd, Some(args.project.clone()), files, output);
    let limits = Limits { timeout: Duration::from_secs(args.timeout), stable: Duration::from_secs(args.stable) };
    let never = CancellationToken::new();
    let services = [args.service.clone()];
    let attempt = |image: ImageId, since: String| {
        let (target, never, services) = (&target, never.clone(), services.clone());
        async move {
            // The checkout may have just moved (rollback): its configuration is read again.
            target.resolve(&services, &never, &Print).await.map_err(|e| e.to_string())?;
            let images: Images = [(services[0].clone(), image)].into();
            target.apply(&images, &|_| {}, &never, &Print).await.map_err(|e| e.to_string())?;
            let outcome = target.verify(&images, &since, limits, &never, &Print).await.map_err(|e| e.to_string())?;
            outcome.failure.map_or(Ok(()), Err)
        }
    };
    println!("recreating {} with {}", args.service, args.image);
    match attempt(args.image.clone(), args.since.clone()).await {
        Ok(()) => {
            println!("verified: {} runs {}", args.service, args.image);
            0
        }
        Err(why) => {
            println!("the new image did not verify: {why}");
            let Some(previous) = args.previous else {
                println!("nothing ran before; nothing to bring back");
                return 2;
            };
            println!("bringing back {previous}");
            if let (Some(commit), Some(branch)) = (&args.previous_commit, &args.branch) {
                // The previous image with the new commit's configuration could fail the same way.
                let git = Git::new(Host::local(), std::env::current_dir().unwrap_or_default());
                match git.checkout(branch, commit, &CancellationToken::new(), &Print).await {
                    Ok(()) => println!("the checkout is back at {}", commit.short()),
                    Err(e) => println!("cannot return the checkout to {}: {e}", commit.short()),
                }
            }
            match attempt(previous.clone(), now_rfc3339()).await {
                Ok(()) => {
                    println!("rolled back: {} runs {previous} again", args.service);
                    1
                }
                Err(why) => {
                    println!("the previous image did not verify either: {why}");
                    2
                }
            }
        }
    }
}
