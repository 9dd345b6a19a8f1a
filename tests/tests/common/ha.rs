//! A PostgreSQL cluster that fails over, for the high-availability tests: etcd and
//! two Patroni-managed PostgreSQL nodes (a primary and a synchronous standby) on
//! loopback, started by `scripts/ha-demo start --no-vault` in a temporary directory
//! on free ports, so the tests run exactly what the demo runs. Dropping it stops
//! every process and deletes the directory.
//!
//! Needs PostgreSQL, Patroni and etcd: the script installs them from Debian when it
//! runs as root, and otherwise fails saying what to install.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::TestResult;

const HA_DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ha-demo");

/// One PostgreSQL node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Patroni's name for it: `pg1` or `pg2`.
    pub name: String,
    /// PostgreSQL's port on 127.0.0.1.
    pub pg_port: u16,
    /// Patroni's REST API port on 127.0.0.1.
    pub rest_port: u16,
    /// Its data directory (where `postmaster.pid` is).
    pub data_dir: PathBuf,
}

/// etcd + Patroni + two PostgreSQL nodes, running until dropped.
pub struct HaCluster {
    dir: tempfile::TempDir,
    nodes: [Node; 2],
    url: String,
    /// The node whose postmaster `kill_primary_postgres` killed last.
    killed: Option<Node>,
}

impl HaCluster {
    /// Starts the cluster and returns once the primary leads and the other node
    /// is its synchronous standby (about 15 s).
    pub fn start() -> TestResult<HaCluster> {
        let dir = tempfile::Builder::new().prefix("vault-ha-").tempdir()?;
        let [etcd, etcd_peer, pg1, pg2, rest1, rest2] = free_ports()?;
        let node = |name: &str, pg_port, rest_port| Node {
            name: name.to_owned(),
            pg_port,
            rest_port,
            data_dir: dir.path().join(name).join("data"),
        };
        let nodes = [node("pg1", pg1, rest1), node("pg2", pg2, rest2)];
        // Built before the script runs, so that a failed start is still torn down.
        let mut cluster = HaCluster {
            dir,
            nodes,
            url: String::new(),
            killed: None,
        };
        let ports = [
            ("VAULT_HA_ETCD_PORT", etcd),
            ("VAULT_HA_ETCD_PEER_PORT", etcd_peer),
            ("VAULT_HA_PG1_PORT", pg1),
            ("VAULT_HA_PG2_PORT", pg2),
            ("VAULT_HA_REST1_PORT", rest1),
            ("VAULT_HA_REST2_PORT", rest2),
        ];
        let mut command = cluster.script();
        command.args(["start", "--no-vault"]);
        for (name, port) in ports {
            command.env(name, port.to_string());
        }
        let output = command.output()?;
        if !output.status.success() {
            return Err(cluster.failure("scripts/ha-demo start", &output).into());
        }
        cluster.url = fs::read_to_string(cluster.dir.path().join("pg-url"))?
            .trim()
            .to_owned();
        Ok(cluster)
    }

    /// The multi-host URL of both nodes as the role `vault`, with
    /// `target_session_attrs=read-write`: whichever node is the primary answers.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The CA that signed both nodes' TLS certificate (IP:127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls").join("ca.pem")
    }

    /// The directory everything lives in (logs under `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nodes(&self) -> &[Node; 2] {
        &self.nodes
    }

    /// The node that leads now with PostgreSQL running read-write: Patroni's
    /// `/primary` answers 200 while a node holds the leader lock, and its body says
    /// whether PostgreSQL has left recovery and runs.
    pub fn primary(&self) -> TestResult<Node> {
        for node in &self.nodes {
            if let Ok((200, body)) = http_get(node.rest_port, "/primary") {
                let status: serde_json::Value = serde_json::from_str(&body)?;
                let role = status["role"].as_str().unwrap_or_default();
                if matches!(role, "master" | "primary") && status["state"] == "running" {
                    return Ok(node.clone());
                }
            }
        }
        Err("no node is the running primary".into())
    }

    /// The synchronous standby named in etcd now, from Patroni's `/cluster` (asked
    /// of any node that answers).
    pub fn sync_standby(&self) -> TestResult<Option<Node>> {
        for node in &self.nodes {
            if let Ok((200, body)) = http_get(node.rest_port, "/cluster") {
                let cluster: serde_json::Value = serde_json::from_str(&body)?;
                let members = cluster["members"].as_array().ok_or("no members")?;
                // A replica's state is "running" up to Patroni 3.0, "streaming" after.
                let sync = members
                    .iter()
                    .find(|m| {
                        m["role"] == "sync_standby"
                            && (m["state"] == "running" || m["state"] == "streaming")
                    })
                    .and_then(|m| m["name"].as_str());
                return Ok(sync.and_then(|name| self.node(name)));
            }
        }
        Err("no Patroni answers /cluster".into())
    }

    /// Each member as Patroni lists it now, `name role state` (for a report).
    pub fn members(&self) -> TestResult<Vec<String>> {
        for node in &self.nodes {
            if let Ok((200, body)) = http_get(node.rest_port, "/cluster") {
                let cluster: serde_json::Value = serde_json::from_str(&body)?;
                let members = cluster["members"].as_array().ok_or("no members")?;
                return Ok(members
                    .iter()
                    .map(|m| {
                        let field = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
                        format!("{} {} {}", field("name"), field("role"), field("state"))
                    })
                    .collect());
            }
        }
        Err("no Patroni answers /cluster".into())
    }

    /// Waits until a node is the running synchronous standby.
    pub fn wait_for_sync_standby(&self, limit: Duration) -> TestResult<Node> {
        self.poll(limit, "a synchronous standby", || {
            Ok(self.sync_standby().ok().flatten())
        })
    }

    /// The pid of `node`'s postmaster, from its `postmaster.pid`.
    pub fn postmaster_pid(&self, node: &Node) -> TestResult<u32> {
        let text = fs::read_to_string(node.data_dir.join("postmaster.pid"))?;
        let first = text.lines().next().ok_or("empty postmaster.pid")?;
        Ok(first.trim().parse()?)
    }

    /// `kill -9` of the primary's postmaster (its backends and Patroni live on);
    /// returns when it was sent.
    pub fn kill_primary_postgres(&mut self) -> TestResult<Instant> {
        let primary = self.primary()?;
        let pid = self.postmaster_pid(&primary)?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        let at = Instant::now();
        if !status.success() {
            return Err(format!("kill -KILL {pid} ({}'s postmaster) failed", primary.name).into());
        }
        self.killed = Some(primary);
        Ok(at)
    }

    /// Waits until a node other than the one last killed is the running primary.
    pub fn wait_for_new_primary(&self, limit: Duration) -> TestResult<Node> {
        self.poll(limit, "a new primary", || {
            Ok(self
                .primary()
                .ok()
                .filter(|node| Some(node) != self.killed.as_ref()))
        })
    }

    fn node(&self, name: &str) -> Option<Node> {
        self.nodes.iter().find(|n| n.name == name).cloned()
    }

    fn poll<T>(
        &self,
        limit: Duration,
        what: &str,
        mut probe: impl FnMut() -> TestResult<Option<T>>,
    ) -> TestResult<T> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = probe()? {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!("no {what} within {limit:?}\n{}", self.log_tails()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn script(&self) -> Command {
        let mut command = Command::new(HA_DEMO);
        command.env("VAULT_HA_DIR", self.dir.path());
        command
    }

    fn failure(&self, what: &str, output: &Output) -> String {
        format!(
            "{what} failed ({}):\n{}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tails()
        )
    }

    /// The end of each process's log, for a failure message.
    fn log_tails(&self) -> String {
        let mut text = String::new();
        for name in ["etcd", "patroni-pg1", "patroni-pg2"] {
            let path = self.dir.path().join("log").join(format!("{name}.log"));
            let log = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            text.push_str(&format!("--- {} (end)\n{tail}\n", path.display()));
        }
        text
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        match self.script().arg("stop").output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("{}", self.failure("scripts/ha-demo stop", &output)),
            Err(e) => eprintln!("scripts/ha-demo stop: {e}"),
        }
        // The script's lock file, beside the directory.
        let mut lock = self.dir.path().as_os_str().to_owned();
        lock.push(".lock");
        let _ = fs::remove_file(lock);
    }
}

/// Six distinct ports free on 127.0.0.1 (all held at once while they are chosen).
fn free_ports() -> TestResult<[u16; 6]> {
    let listeners = (0..6)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; 6];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A GET to Patroni's REST API: (status, body). HTTP/1.0, so the server closes
/// the connection after its answer.
fn http_get(port: u16, path: &str) -> TestResult<(u16, String)> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
