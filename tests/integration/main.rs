//! One integration binary: each test starts the real `kua-deploy serve` on port 0 against a real
//! git remote, the real Docker engine and Compose v2, and drives it over HTTP as a user would.

mod api;
mod cli;
mod deploy;
mod faults;
mod fleet;
mod notify;
mod observe;
mod openapi;
mod recovery;
mod secrets;
mod shipped;
mod ssh;
mod support;
mod tls;
mod webhook;
mod webui;
