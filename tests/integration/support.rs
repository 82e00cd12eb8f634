//! The test world: a real git remote (bare, on disk) and a deploy checkout of a small busybox web
//! app, a registry naming it, the real `kua-deploy serve` on port 0, and the real Docker engine
//! with Compose v2. Everything a test makes in Docker carries the label `kua-deploy.test` and a
//! project of its own, and is removed when the test ends (and left-overs of earlier runs, once,
//! before the first test starts).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use kua_deploy::cli::client::Client;
use kua_deploy::model::{AppName, Deploy, DeployId, Phase};
use serde_json::{json, Value};

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const BUSYBOX: &str = "/bin/busybox";
pub const TEST_LABEL: &str = "kua-deploy.test";

/// Runs a command that must succeed; a missing tool fails the test with what to install.
pub fn sh(dir: &Path, argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?} ({e}); this test needs it installed (see .ci/run)", argv[0]));
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        argv,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut argv =
        vec!["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"];
    argv.extend_from_slice(args);
    sh(dir, &argv)
}

fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Removes everything labelled by a test: containers first, then images and networks.
fn remove_labelled(filter: &str) {
    let ids = sh(Path::new("/"), &["docker", "ps", "-aq", "--filter", filter]);
    if !ids.is_empty() {
        let mut argv = vec!["rm", "-f"];
        argv.extend(ids.split_whitespace());
        docker_ok(&argv);
    }
    let ids = sh(Path::new("/"), &["docker", "images", "-q", "--filter", filter]);
    if !ids.is_empty() {
        let mut argv = vec!["rmi", "-f"];
        argv.extend(ids.split_whitespace());
        docker_ok(&argv);
    }
    let ids = sh(Path::new("/"), &["docker", "network", "ls", "-q", "--filter", filter]);
    if !ids.is_empty() {
        let mut argv = vec!["network", "rm"];
        argv.extend(ids.split_whitespace());
        docker_ok(&argv);
    }
}

static PREFLIGHT: Once = Once::new();

/// Fails (never skips) when Docker, Compose v2, git or busybox is missing, and clears what earlier
/// runs left behind.
pub fn preflight() {
    PREFLIGHT.call_once(|| {
        let v = sh(Path::new("/"), &["docker", "version", "--format", "{{.Server.Version}}"]);
        assert!(!v.is_empty(), "the Docker engine did not answer");
        let c = sh(Path::new("/"), &["docker", "compose", "version", "--short"]);
        assert!(c.starts_with('2') || c.starts_with("v2"), "docker compose is not v2 ({c}); .ci/run installs it");
        sh(Path::new("/"), &["git", "--version"]);
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install busybox-static");
        // Several suites may share one engine while the project is worked on; they say so, and then
        // each leaves the others' objects alone (every test still removes its own).
        if std::env::var_os("KUA_TEST_SHARED_ENGINE").is_none() {
            remove_labelled(&format!("label={TEST_LABEL}"));
        }
    });
}

/// What the app's container does when it starts.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Serves `index.html` on port 80, healthy within about a second.
    Serve,
    /// Exits at once with status 1.
    Crash,
    /// A Dockerfile that cannot build.
    BrokenBuild,
    /// Sleeps `secs` during the build, then serves.
    SlowBuild(u32),
    /// Serves (and turns healthy), then exits after `secs`.
    DieAfter(u32),
}

pub struct AppOptions {
    pub migrations: Option<Value>,
    pub verify: Value,
    pub rollback: bool,
    /// The app's `webhook` entry; `secret_file` may be given as the placeholder `SECRET_FILE`,
    /// replaced by a file holding [`WEBHOOK_SECRET`].
    pub webhook: Option<Value>,
    /// Whether the registry names the Compose project; without it, Compose resolves it (the test
    /// Compose file then carries the project as its top-level `name:`).
    pub explicit_project: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            migrations: None,
            verify: json!({"timeout_s": 30, "stable_s": 1}),
            rollback: true,
            webhook: None,
            explicit_project: true,
        }
    }
}

/// The test app's Compose file: `web` built from the checkout, published on a loopback port, with
/// `web_extra` added to the service and `top_extra` at the top level (both YAML, indented).
pub fn compose_yaml(web_extra: &str, top_extra: &str) -> String {
    format!(
        "{top_extra}services:\n  web:\n    build: .\n    ports: [\"127.0.0.1::80\"]\n    labels: [\"{TEST_LABEL}=1\"]\n{web_extra}\
         networks:\n  default:\n    labels: [\"{TEST_LABEL}=1\"]\n"
    )
}

pub const WEBHOOK_SECRET: &str = "hook-secret-for-tests-5f1d";
pub const WEBHOOK_REPO: &str = "kua/hello";

/// One app: its remote, its checkout, its registry and its Compose project.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub name: AppName,
    pub project: String,
    pub remote: PathBuf,
    pub work: PathBuf,
    pub checkout: PathBuf,
    pub registry: PathBuf,
    pub state: PathBuf,
}

impl TestApp {
    pub fn new(opts: AppOptions) -> TestApp {
        preflight();
        let dir = tempfile::tempdir().expect("tempdir");
        let project = format!("kt{}", &uuid_hex()[..10]);
        let remote = dir.path().join("remote.git");
        let work = dir.path().join("work");
        let checkout = dir.path().join("checkout");
        git(dir.path(), &["init", "--quiet", "--bare", remote.to_str().unwrap()]);
        git(dir.path(), &["init", "--quiet", work.to_str().unwrap()]);
        std::fs::copy(BUSYBOX, work.join("busybox")).expect("copy busybox");
        let name = if opts.explicit_project { String::new() } else { format!("name: {project}\n") };
        std::fs::write(work.join("docker-compose.yml"), compose_yaml("    stop_grace_period: 1s\n", &name)).unwrap();
        std::fs::create_dir_all(work.join("migrations")).unwrap();
        std::fs::write(work.join("migrations/.keep"), "").unwrap();
        let app = TestApp {
            name: AppName::parse("hello").unwrap(),
            project,
            remote,
            work,
            checkout,
            registry: dir.path().join("deploy-registry.json"),
            state: dir.path().join("state"),
            dir,
        };
        app.write_dockerfile(Behaviour::Serve);
        std::fs::write(app.work.join("index.html"), "v1\n").unwrap();
        git(&app.work, &["add", "-A"]);
        git(&app.work, &["commit", "--quiet", "-m", "v1"]);
        git(&app.work, &["remote", "add", "origin", app.remote.to_str().unwrap()]);
        git(&app.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        git(
            app.dir.path(),
            &["clone", "--quiet", "--branch", "main", app.remote.to_str().unwrap(), app.checkout.to_str().unwrap()],
        );
        let mut entry = json!({
            "repo": app.checkout,
            "services": ["web"],
            "verify": opts.verify,
            "rollback": opts.rollback,
        });
        if opts.explicit_project {
            entry["project"] = json!(app.project);
        }
        if let Some(m) = opts.migrations {
            entry["migrations"] = m;
        }
        if let Some(mut w) = opts.webhook {
            if w["secret_file"] == "SECRET_FILE" {
                let f = app.dir.path().join("webhook-secret");
                std::fs::write(&f, format!("{WEBHOOK_SECRET}\n")).unwrap();
                w["secret_file"] = json!(f);
            }
            entry["webhook"] = w;
        }
        std::fs::write(&app.registry, serde_json::to_string_pretty(&json!({"apps": {"hello": entry}})).unwrap())
            .unwrap();
        app
    }

    pub fn write_dockerfile(&self, b: Behaviour) {
        let base =
            format!("FROM scratch\nLABEL {TEST_LABEL}=1\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n");
        let serve = "HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/bin/busybox\",\"wget\",\"-q\",\"-O\",\"/dev/null\",\"http://127.0.0.1/\"]\nCMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"80\",\"-h\",\"/www\"]\n";
        let text = match b {
            Behaviour::Serve => format!("{base}{serve}"),
            Behaviour::Crash => format!("{base}CMD [\"/bin/busybox\",\"sh\",\"-c\",\"echo crashing; exit 1\"]\n"),
            Behaviour::BrokenBuild => format!("{base}COPY no-such-file /nowhere\n{serve}"),
            Behaviour::DieAfter(secs) => format!(
                "{base}HEALTHCHECK --interval=1s --timeout=2s CMD [\"/bin/busybox\",\"wget\",\"-q\",\"-O\",\"/dev/null\",\"http://127.0.0.1/\"]\n\
                 CMD [\"/bin/busybox\",\"sh\",\"-c\",\"/bin/busybox httpd -p 80 -h /www; /bin/busybox sleep {secs}; exit 1\"]\n"
            ),
            Behaviour::SlowBuild(secs) => {
                format!("{base}RUN [\"/bin/busybox\",\"sleep\",\"{secs}\"]\nRUN [\"/bin/busybox\",\"true\"]\n{serve}")
            }
        };
        std::fs::write(self.work.join("Dockerfile"), text).unwrap();
    }

    /// Commits the work tree with `content` served, pushes it, returns the commit id.
    pub fn push(&self, content: &str, b: Behaviour) -> String {
        self.push_to("main", content, b)
    }

    pub fn push_to(&self, branch: &str, content: &str, b: Behaviour) -> String {
        self.write_dockerfile(b);
        std::fs::write(self.work.join("index.html"), format!("{content}\n")).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "--allow-empty", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", &format!("HEAD:refs/heads/{branch}")]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn start(&self) -> Server {
        Server::start(&self.registry, &self.state)
    }

    /// What the app's `web` container serves on its published loopback port.
    pub fn fetch(&self) -> Option<String> {
        let out = Command::new("docker")
            .args(["compose", "-p", &self.project, "port", "web", "80"])
            .current_dir(&self.checkout)
            .output()
            .ok()?;
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || !addr.starts_with("127.0.0.1:") {
            return None;
        }
        let body = Command::new(BUSYBOX).args(["wget", "-q", "-O", "-", &format!("http://{addr}/")]).output().ok()?;
        body.status.success().then(|| String::from_utf8_lossy(&body.stdout).trim().to_owned())
    }

    /// `(container id, image id)` of each running `web` container Compose made.
    pub fn web_containers(&self) -> Vec<(String, String)> {
        let ids = sh(
            Path::new("/"),
            &[
                "docker",
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                "label=com.docker.compose.service=web",
                "--filter",
                "label=com.docker.compose.oneoff=False",
            ],
        );
        ids.split_whitespace()
            .map(|id| (id.to_owned(), sh(Path::new("/"), &["docker", "inspect", "-f", "{{.Image}}", id])))
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        remove_labelled(&format!("label=com.docker.compose.project={}", self.project));
    }
}

pub fn uuid_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A running `kua-deploy serve`, stopped (SIGTERM) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub client: Client,
    log: PathBuf,
    /// The rest of its stdout, after the listen line (the metrics line, with --metrics-listen).
    stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(registry: &Path, state: &Path) -> Server {
        Server::spawn(Server::command(registry, state))
    }

    /// The `kua-deploy serve` command [`Server::start`] runs: port 0, the test token.
    pub fn command(registry: &Path, state: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kua-deploy"));
        cmd.args(["serve", "--config", registry.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .env("KUA_ADMIN_TOKEN", TOKEN);
        cmd
    }

    /// Starts a prepared `kua-deploy serve` command and waits for its listen line.
    pub fn spawn(mut cmd: Command) -> Server {
        let log = std::env::temp_dir().join(format!("kua-test-server-{}.log", uuid_hex()));
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kua-deploy serve");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).expect("read the listen line");
        let url = line
            .trim()
            .strip_prefix("kua-deploy listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; server log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        let client = Client::new(url.clone(), TOKEN);
        Server { child, url, client, log, stdout }
    }

    /// The next line the server prints on stdout.
    pub fn stdout_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the server's stdout");
        line.trim().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        started.elapsed()
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn auth(&self) -> String {
        format!("Bearer {TOKEN}")
    }

    /// Polls the deploy until `until` holds for it, or panics after `timeout` with what it saw.
    pub async fn wait_for(&self, id: &DeployId, timeout: Duration, until: impl Fn(&Deploy) -> bool) -> Deploy {
        let start = Instant::now();
        loop {
            let d = self.client.deploy_status(id).await.expect("GET deploy");
            if until(&d) {
                return d;
            }
            assert!(
                start.elapsed() < timeout,
                "deploy did not get there in {timeout:?}: {d:#?}\nserver log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_end(&self, id: &DeployId) -> Deploy {
        self.wait_for(id, Duration::from_secs(120), |d| d.phase.is_terminal() || d.phase == Phase::AwaitingApproval)
            .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
        // A failing test keeps the server's log for whoever reads the failure.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A real OpenSSH server on a port of 127.0.0.1, with its own host key, one authorized
/// client key and its own log, for apps on an `ssh://` host; several run side by side as a
/// fleet's servers. Stopped when dropped.
pub struct SshServer {
    /// The address it listens on: 127.0.0.1 (tests reach nothing else).
    pub addr: String,
    pub port: u16,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SshServer {
    pub fn start() -> SshServer {
        let addr = "127.0.0.1";
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        for key in ["host_key", "id"] {
            sh(dir.path(), &["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", p(key).to_str().unwrap()]);
        }
        std::fs::copy(p("id.pub"), p("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (sshd's privilege separation dir)");
        let port = std::net::TcpListener::bind((addr, 0)).unwrap().local_addr().unwrap().port();
        let config = format!(
            "Port {port}\nListenAddress {addr}\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nPidFile {}\n\
             SetEnv PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n",
            p("host_key").display(),
            p("authorized_keys").display(),
            p("sshd.pid").display()
        );
        std::fs::write(p("sshd_config"), config).unwrap();
        let host_pub = std::fs::read_to_string(p("host_key.pub")).unwrap();
        std::fs::write(p("known_hosts"), format!("[{addr}]:{port} {host_pub}")).unwrap();
        let mut server = SshServer {
            addr: addr.to_owned(),
            port,
            identity: p("id"),
            known_hosts: p("known_hosts"),
            dir,
            child: None,
        };
        server.listen();
        server
    }

    /// Starts sshd (again) with the same port, keys and log. Its sessions see an empty
    /// `~/.bashrc`: bash sources it for every command sshd runs, and this machine's runs `pyenv
    /// init`, whose rehash lock serializes concurrent sessions (seconds each under load) — a
    /// fleet host's profile is its own, not the test machine's. A bind mount in a mount namespace
    /// of sshd's own; nothing changes for the rest of the machine.
    pub fn listen(&mut self) {
        let p = |name: &str| self.dir.path().join(name);
        let sshd =
            ["/usr/sbin/sshd", "-D", "-f", p("sshd_config").to_str().unwrap(), "-E", p("sshd.log").to_str().unwrap()]
                .map(str::to_owned);
        let bashrc = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".bashrc")).filter(|rc| rc.exists());
        let mut cmd = match bashrc {
            Some(rc) => {
                std::fs::write(p("empty_bashrc"), "").unwrap();
                let mut c = Command::new("unshare");
                // Every step execs, so the child's pid stays sshd's (kill() walks its children).
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" "$1" && shift && exec "$@""#,
                ]);
                c.arg(p("empty_bashrc")).arg(rc).args(&sshd);
                c
            }
            None => {
                let mut c = Command::new(&sshd[0]);
                c.args(&sshd[1..]);
                c
            }
        };
        let child = cmd.spawn().expect("start /usr/sbin/sshd (apt-get install openssh-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "sshd did not listen on {}:{}", self.addr, self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Kills sshd and every connection it serves (its child processes), as a crashed host would.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id();
        // Its connections' processes, and theirs: found by parent pid, children before parents.
        let mut family = vec![pid];
        let mut i = 0;
        while i < family.len() {
            let parent = family[i];
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
                let ppid: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                let Ok(own) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
                if ppid == parent && !family.contains(&own) {
                    family.push(own);
                }
            }
            i += 1;
        }
        // Found before the listener dies, while they are still its children.
        let _ = child.kill();
        let _ = child.wait();
        for p in family.into_iter().skip(1) {
            // SAFETY: a plain kill of a process this test's sshd forked.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }

    /// Replaces the host key (as a reinstalled server would), leaving `known_hosts` with the old one.
    pub fn new_host_key(&self) {
        let key = self.dir.path().join("host_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        sh(self.dir.path(), &["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
    }

    /// How many connections sshd accepted over its whole life.
    pub fn connections(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestApp {
    /// Rewrites the registry through `edit`.
    pub fn edit_registry(&self, edit: impl FnOnce(&mut Value)) {
        let mut reg: Value = serde_json::from_str(&std::fs::read_to_string(&self.registry).unwrap()).unwrap();
        edit(&mut reg);
        std::fs::write(&self.registry, serde_json::to_string_pretty(&reg).unwrap()).unwrap();
    }
}

/// Two CAs, and a server certificate (with its key) for `localhost` and 127.0.0.1 signed by the
/// first. `openssl` must be installed: without it the test fails saying so.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        for (ca, name) in [("ca", "Test CA"), ("other-ca", "Other CA")] {
            let (key, pem) = (p(&format!("{ca}.key")), p(&format!("{ca}.pem")));
            let mut argv = vec!["openssl", "req", "-x509", "-days", "2", "-subj"];
            let subj = format!("/CN={name}");
            argv.extend([subj.as_str(), "-keyout", &key, "-out", &pem]);
            argv.extend(ec);
            sh(d, &argv);
        }
        let mut argv = vec!["openssl", "req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
        argv.extend(ec);
        sh(d, &argv);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        sh(
            d,
            &[
                "openssl",
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
        );
        Pki {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            dir,
        }
    }
}
