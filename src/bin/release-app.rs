//! The `release-app` binary: `kua-deploy release` under the name app repos call it by.

fn main() {
    std::process::exit(kua_deploy::cli::release_app_main());
}
