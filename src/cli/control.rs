//! The commands that act on a deploy: `approve` (let an `awaiting_approval` deploy go on) and
//! `cancel` (stop a queued, awaiting or running one, before its recreate begins).

use super::show::{connect, fail, parse_deploy_id, print_deploy, print_json};
use super::{exit, ConnArgs};
use crate::model::{DeployId, Phase};

#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The deploy's id, as `history` lists it.
    #[arg(value_parser = parse_deploy_id)]
    pub deploy_id: DeployId,
    /// Print the API's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `approve <id>`: exit 0 when the deploy was queued to go on, 1 when the server refused.
pub async fn approve(args: DeployArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.approve(&args.deploy_id).await {
        Ok(d) if args.json => {
            print_json(&d);
            exit::OK
        }
        Ok(d) => {
            print_deploy(&d, "approved");
            println!("follow it: kua-deploy logs {} --follow", d.deploy_id);
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// `cancel <id>`: exit 0 when the deploy ended cancelled (or is stopping), 1 when refused.
pub async fn cancel(args: DeployArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.cancel(&args.deploy_id).await {
        Ok(d) if args.json => {
            print_json(&d);
            exit::OK
        }
        Ok(d) => {
            let title = if d.phase == Phase::Cancelled { "cancelled" } else { "cancel requested" };
            print_deploy(&d, title);
            exit::OK
        }
        Err(e) => fail(&e),
    }
}
