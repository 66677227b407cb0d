//! peercomm-sim: local networks of real nodes for tests, the demo and
//! benchmarks.
//!
//! A [`SimNet`] starts N real [`Node`]s in one process, each with its own
//! temporary data dir, listening on loopback TCP. It connects them in a
//! chosen [`Topology`], stops, kills (as a crash would) and restarts nodes on
//! the same data dir and port, and waits for conditions with a deadline.
//! Every node shares one [`TestClock`], so a test can move time.

pub mod bandwidth;
pub mod corpus;
pub mod groups;
pub mod load;
pub mod mls_cost;
pub mod offline;
pub mod scale;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use peercomm_node::{
    Config, DeliveryState, MessageId, Multiaddr, Node, NodeHandle, NodeOptions, OutgoingMessage,
    PeerId, TestClock,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// How nodes are connected when the network starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// No connections.
    Isolated,
    /// Every node connected to every other.
    FullMesh,
    /// Node i connected to node i+1.
    Line,
    /// A line whose ends are joined.
    Ring,
    /// Node 0 connected to all others.
    Star,
    /// Each node connected to `k` random others (seeded).
    Random(usize),
}

/// Which transport the nodes listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimTransport {
    /// TCP with Noise and Yamux (wire bytes are counted).
    #[default]
    Tcp,
    /// QUIC.
    Quic,
    /// libp2p's in-process memory transport (thousands of nodes, no sockets).
    Memory,
}

impl SimTransport {
    fn listen_addr(self) -> Multiaddr {
        match self {
            SimTransport::Tcp => "/ip4/127.0.0.1/tcp/0".parse(),
            SimTransport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse(),
            SimTransport::Memory => "/memory/0".parse(),
        }
        .unwrap_or_else(|_| Multiaddr::empty())
    }
}

/// How to build a simulated network.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How many nodes.
    pub nodes: usize,
    /// Initial connections.
    pub topology: Topology,
    /// Seed for topology and any other random choice.
    pub seed: u64,
    /// The transport.
    pub transport: SimTransport,
    /// The configuration each node starts with (listen addresses are set by
    /// the simulator).
    pub config: Config,
    /// When set, every other node starts with this node as its only DHT
    /// bootstrap peer (and no other connection is made for it).
    pub bootstrap_via: Option<usize>,
}

impl SimOptions {
    /// `nodes` nodes in `topology`, with test-friendly timings (fast retries
    /// and ticks) and a seed from the environment (`PEERCOMM_SIM_SEED`) or
    /// random.
    pub fn new(nodes: usize, topology: Topology) -> Self {
        let seed = std::env::var("PEERCOMM_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::thread_rng().gen());
        Self {
            nodes,
            topology,
            seed,
            transport: SimTransport::Tcp,
            config: test_config(),
            bootstrap_via: None,
        }
    }
}

/// A configuration tuned for simulated networks: retries within a second,
/// a fast outbox tick.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.delivery.retry_base = Duration::from_millis(200);
    config.delivery.retry_cap = Duration::from_secs(2);
    config.delivery.tick = Duration::from_millis(50);
    config.network.request_timeout = Duration::from_secs(10);
    config.dht.query_timeout = Duration::from_secs(20);
    config.dht.refresh_interval = Duration::from_secs(30);
    config.groups.auto_join = true;
    config.groups.heartbeat = Duration::from_millis(300);
    config.groups.catch_up_interval = Duration::from_secs(5);
    config
}

/// Why a simulation step failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A node did not start.
    #[error("node {index} did not start: {source}")]
    Start {
        /// Which node.
        index: usize,
        /// Why.
        source: peercomm_node::StartError,
    },
    /// The node at this index is not running.
    #[error("node {0} is not running")]
    NotRunning(usize),
    /// A condition did not hold before its deadline.
    #[error("timed out after {0:?} waiting for: {1}")]
    Timeout(Duration, String),
    /// A node refused a request.
    #[error("node {index}: {reason}")]
    Node {
        /// Which node.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Temporary directories could not be made.
    #[error("cannot create a data dir: {0}")]
    Io(#[from] std::io::Error),
}

/// One node of the network, running or stopped.
#[derive(Debug)]
pub struct SimNode {
    data_dir: PathBuf,
    peer_id: PeerId,
    listen: Multiaddr,
    config: Config,
    node: Option<Node>,
    handle: Option<NodeHandle>,
}

/// A local network of real nodes.
#[derive(Debug)]
pub struct SimNet {
    nodes: Vec<SimNode>,
    clock: TestClock,
    config: Config,
    transport: SimTransport,
    seed: u64,
    _root: tempfile::TempDir,
}

impl SimNet {
    /// Starts the nodes and connects them as asked. Prints the seed.
    pub async fn start(options: SimOptions) -> Result<Self, SimError> {
        eprintln!(
            "peercomm-sim: {} nodes, {:?}, seed {} (set PEERCOMM_SIM_SEED to replay)",
            options.nodes, options.topology, options.seed
        );
        let root = tempfile::Builder::new().prefix("peercomm-sim-").tempdir()?;
        let clock = TestClock::new();
        let mut nodes = Vec::with_capacity(options.nodes);
        let mut bootstrap_addr: Option<Multiaddr> = None;
        for index in 0..options.nodes {
            let data_dir = root.path().join(format!("node-{index}"));
            let mut config = options.config.clone();
            if let Some(addr) = &bootstrap_addr {
                config.bootstrap = vec![addr.clone()];
            }
            let (node, listen) = start_node(
                index,
                &data_dir,
                &config,
                &clock,
                options.transport.listen_addr(),
                options.seed,
            )
            .await?;
            let handle = node.handle();
            if options.bootstrap_via == Some(index) {
                bootstrap_addr = Some(listen.clone().with(Protocol::P2p(handle.peer_id())));
            }
            nodes.push(SimNode {
                data_dir,
                peer_id: handle.peer_id(),
                listen,
                config,
                node: Some(node),
                handle: Some(handle),
            });
        }
        let mut net = Self {
            nodes,
            clock,
            config: options.config,
            transport: options.transport,
            seed: options.seed,
            _root: root,
        };
        net.connect_topology(options.topology).await?;
        Ok(net)
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the network has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The shared clock.
    pub fn clock(&self) -> &TestClock {
        &self.clock
    }

    /// The handle of a running node.
    ///
    /// # Panics
    /// If the node is stopped: a test that uses a stopped node is wrong.
    pub fn handle(&self, index: usize) -> &NodeHandle {
        self.try_handle(index)
            .unwrap_or_else(|| panic!("node {index} is not running"))
    }

    /// The handle of a node, if it is running.
    pub fn try_handle(&self, index: usize) -> Option<&NodeHandle> {
        self.nodes.get(index).and_then(|n| n.handle.as_ref())
    }

    /// A node's PeerId (also while stopped).
    pub fn peer_id(&self, index: usize) -> PeerId {
        self.nodes[index].peer_id
    }

    /// A node's full address, `/ip4/127.0.0.1/tcp/<port>/p2p/<peer-id>`.
    pub fn addr(&self, index: usize) -> Multiaddr {
        let n = &self.nodes[index];
        n.listen.clone().with(Protocol::P2p(n.peer_id))
    }

    /// A node's data dir.
    pub fn data_dir(&self, index: usize) -> &std::path::Path {
        &self.nodes[index].data_dir
    }

    /// Node `from` dials node `to`.
    pub async fn connect(&self, from: usize, to: usize) -> Result<(), SimError> {
        let handle = self.try_handle(from).ok_or(SimError::NotRunning(from))?;
        handle
            .dial(self.addr(to))
            .await
            .map_err(|e| SimError::Node {
                index: from,
                reason: e.to_string(),
            })
    }

    /// Cuts the link between nodes `a` and `b`: each refuses connections
    /// with the other (open ones close), as a firewall or NAT would. Lasts
    /// until [`SimNet::heal`] or a restart.
    pub async fn cut(&self, a: usize, b: usize) -> Result<(), SimError> {
        self.set_link(a, b, false).await
    }

    /// Restores a link [`SimNet::cut`] cut.
    pub async fn heal(&self, a: usize, b: usize) -> Result<(), SimError> {
        self.set_link(a, b, true).await
    }

    async fn set_link(&self, a: usize, b: usize, up: bool) -> Result<(), SimError> {
        for (me, other) in [(a, b), (b, a)] {
            if let Some(handle) = self.try_handle(me) {
                let peer = self.peer_id(other);
                let done = if up {
                    handle.unblock_peer(peer).await
                } else {
                    handle.block_peer(peer).await
                };
                done.map_err(|e| SimError::Node {
                    index: me,
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Tells every running node where every other node listens, without
    /// connecting (connections are made when messages need them).
    pub async fn introduce_all(&self) -> Result<(), SimError> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(handle) = &node.handle else { continue };
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j {
                    handle
                        .add_peer_address(other.peer_id, other.listen.clone())
                        .await
                        .map_err(|e| SimError::Node {
                            index: i,
                            reason: e.to_string(),
                        })?;
                }
            }
        }
        Ok(())
    }

    async fn connect_topology(&mut self, topology: Topology) -> Result<(), SimError> {
        let n = self.nodes.len();
        let mut pairs = Vec::new();
        match topology {
            Topology::Isolated => {}
            Topology::FullMesh => {
                for i in 0..n {
                    for j in i + 1..n {
                        pairs.push((i, j));
                    }
                }
            }
            Topology::Line => pairs.extend((1..n).map(|i| (i - 1, i))),
            Topology::Ring => {
                pairs.extend((1..n).map(|i| (i - 1, i)));
                if n > 2 {
                    pairs.push((n - 1, 0));
                }
            }
            Topology::Star => pairs.extend((1..n).map(|i| (i, 0))),
            Topology::Random(k) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
                for i in 0..n {
                    let mut others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
                    others.shuffle(&mut rng);
                    for j in others.into_iter().take(k) {
                        if !pairs.contains(&(j, i)) && !pairs.contains(&(i, j)) {
                            pairs.push((i, j));
                        }
                    }
                }
            }
        }
        for (i, j) in &pairs {
            self.connect(*i, *j).await?;
        }
        // Wait until every link is up in both directions.
        let deadline = Duration::from_secs(30);
        for (i, j) in pairs {
            let (a, b) = (self.handle(i).clone(), self.peer_id(j));
            wait_until(deadline, &format!("node {i} connected to node {j}"), || {
                let a = a.clone();
                async move {
                    a.peers()
                        .await
                        .map(|p| p.iter().any(|p| p.peer_id == b))
                        .unwrap_or(false)
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Stops a node gracefully.
    pub async fn stop(&mut self, index: usize) -> Result<(), SimError> {
        let node = self.nodes[index]
            .node
            .take()
            .ok_or(SimError::NotRunning(index))?;
        self.nodes[index].handle = None;
        node.shutdown().await;
        Ok(())
    }

    /// Ends a node at once, as a crash would (no graceful shutdown).
    pub fn kill(&mut self, index: usize) -> Result<(), SimError> {
        let node = self.nodes[index]
            .node
            .take()
            .ok_or(SimError::NotRunning(index))?;
        self.nodes[index].handle = None;
        node.kill();
        Ok(())
    }

    /// Starts a stopped node again on its data dir and its old address.
    pub async fn restart(&mut self, index: usize) -> Result<(), SimError> {
        if self.nodes[index].node.is_some() {
            return Ok(());
        }
        let listen = self.nodes[index].listen.clone();
        let data_dir = self.nodes[index].data_dir.clone();
        let config = self.nodes[index].config.clone();
        // The old listener may take a moment to release its port.
        let mut last = None;
        for _ in 0..50 {
            match start_node(
                index,
                &data_dir,
                &config,
                &self.clock,
                listen.clone(),
                self.seed,
            )
            .await
            {
                Ok((node, _)) => {
                    let handle = node.handle();
                    self.nodes[index].node = Some(node);
                    self.nodes[index].handle = Some(handle);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or(SimError::NotRunning(index)))
    }

    /// Starts a stopped node again on its data dir but a new port.
    pub async fn restart_on_new_port(&mut self, index: usize) -> Result<(), SimError> {
        if self.nodes[index].node.is_some() {
            return Err(SimError::Node {
                index,
                reason: "stop it first".into(),
            });
        }
        let data_dir = self.nodes[index].data_dir.clone();
        let config = self.nodes[index].config.clone();
        let (node, listen) = start_node(
            index,
            &data_dir,
            &config,
            &self.clock,
            self.transport.listen_addr(),
            self.seed,
        )
        .await?;
        let handle = node.handle();
        self.nodes[index].listen = listen;
        self.nodes[index].node = Some(node);
        self.nodes[index].handle = Some(handle);
        Ok(())
    }

    /// Adds and starts a new node whose only bootstrap peer is `via`.
    /// Returns its index.
    pub async fn spawn(&mut self, via: Option<usize>) -> Result<usize, SimError> {
        self.spawn_through(via.as_slice()).await
    }

    /// Adds and starts a new node whose bootstrap peers are the nodes
    /// `through` (none: it starts alone). Returns its index.
    pub async fn spawn_through(&mut self, through: &[usize]) -> Result<usize, SimError> {
        let index = self.nodes.len();
        let data_dir = self._root.path().join(format!("node-{index}"));
        let mut config = self.config.clone();
        if !through.is_empty() {
            config.bootstrap = through.iter().map(|i| self.addr(*i)).collect();
        }
        let (node, listen) = start_node(
            index,
            &data_dir,
            &config,
            &self.clock,
            self.transport.listen_addr(),
            self.seed,
        )
        .await?;
        let handle = node.handle();
        self.nodes.push(SimNode {
            data_dir,
            peer_id: handle.peer_id(),
            listen,
            config,
            node: Some(node),
            handle: Some(handle),
        });
        Ok(index)
    }

    /// The configuration nodes spawned from now on start with.
    pub fn spawn_config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Changes the configuration a stopped node restarts with.
    pub fn config_mut(&mut self, index: usize) -> &mut Config {
        &mut self.nodes[index].config
    }

    /// Whether the node is running.
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|n| n.node.is_some())
    }

    /// Stops every running node gracefully.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.stop(i).await;
        }
    }
}

async fn start_node(
    index: usize,
    data_dir: &std::path::Path,
    config: &Config,
    clock: &TestClock,
    listen: Multiaddr,
    seed: u64,
) -> Result<(Node, Multiaddr), SimError> {
    let mut config = config.clone();
    config.listen = vec![listen];
    let options = NodeOptions {
        data_dir: data_dir.to_path_buf(),
        config,
        clock: Arc::new(clock.clone()),
        // Each node its own stream, replayable from the network's seed.
        rng_seed: Some(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    };
    let node = Node::start(options)
        .await
        .map_err(|source| SimError::Start { index, source })?;
    let addrs = node
        .handle()
        .listen_addrs()
        .await
        .map_err(|e| SimError::Node {
            index,
            reason: e.to_string(),
        })?;
    let addr = addrs.into_iter().next().ok_or(SimError::Node {
        index,
        reason: "no listen address".into(),
    })?;
    Ok((node, addr))
}

/// Whether a node has joined the DHT and published its own record there.
pub async fn has_joined(handle: &NodeHandle) -> bool {
    handle.dht_stats().await.is_ok_and(|s| s.joined) && handle.stats().dht_publish_ok > 0
}

/// Waits until every node of `net` has joined the DHT and published its
/// record, each within `timeout`.
pub async fn wait_joined(net: &SimNet, timeout: Duration) -> Result<(), SimError> {
    for i in 0..net.len() {
        let h = net.handle(i).clone();
        wait_until(timeout, &format!("node {i} joined the DHT"), || {
            let h = h.clone();
            async move { has_joined(&h).await }
        })
        .await?;
    }
    Ok(())
}

/// Polls `condition` every 20 ms until it holds, or fails after `timeout`
/// naming `what` was awaited.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Result<(), SimError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SimError::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outgoing message `id` as `handle`'s outbox has it now.
pub async fn message(handle: &NodeHandle, id: MessageId) -> Option<OutgoingMessage> {
    handle.message_state(id).await.ok().flatten()
}

/// Waits until outgoing message `id` is in state `want`; on timeout the
/// error says where it got stuck (state, attempts, last error).
pub async fn wait_state(
    handle: &NodeHandle,
    id: MessageId,
    want: DeliveryState,
    within: Duration,
) -> Result<OutgoingMessage, SimError> {
    let h = handle.clone();
    let waited = wait_until(within, &format!("message {id} {want:?}"), || {
        let h = h.clone();
        async move { message(&h, id).await.is_some_and(|m| m.state == want) }
    })
    .await;
    let now = message(handle, id).await;
    match (waited, now) {
        (Ok(()), Some(m)) => Ok(m),
        (Ok(()), None) => Err(SimError::Timeout(within, format!("message {id} vanished"))),
        (Err(_), m) => Err(SimError::Timeout(
            within,
            format!(
                "message {id} {want:?}; it is {:?} after {:?} attempts, last error {:?}",
                m.as_ref().map(|m| m.state),
                m.as_ref().map(|m| m.attempts),
                m.as_ref().and_then(|m| m.last_error.clone()),
            ),
        )),
    }
}
