//! The `kua-deploy` binary: the server (`serve`) and the client commands; see [`kua_deploy::cli`].

fn main() {
    std::process::exit(kua_deploy::cli::main());
}
