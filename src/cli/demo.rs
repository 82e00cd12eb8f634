//! `kua-deploy demo`: deploys a small example app on the local engine, end to end.

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its git remote, checkout, registry and state.
    #[arg(long, default_value = "./kua-demo")]
    pub dir: std::path::PathBuf,
    /// Remove the demo's containers, images and files instead.
    #[arg(long)]
    pub down: bool,
}

pub async fn run(_args: DemoArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
