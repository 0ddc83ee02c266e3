//! The command line (DESIGN.md §3 names the flags other tools rely on).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_proto::ByteSize;

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Store, deliver and stream media.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a single-node Sluice: storage, the HTTP API and (with --rtmp) live streaming in one
    /// process.
    Serve(ServeCmd),
    /// Run the live role alone: RTMP in; RTMP, HTTP-FLV and HLS out.
    Live(LiveArgs),
    /// Run a tracker: the registry of storage nodes, upload placement and read routing.
    Tracker(TrackerArgs),
    /// Run a storage node of a group, registered with one or more trackers.
    Storage(StorageArgs),
    /// Run an edge: a caching proxy near users in front of an origin (serve, node or tracker).
    Edge(EdgeArgs),
    /// Show the cluster: groups, nodes, state, files, bytes and free space.
    Cluster(ClusterArgs),
    /// Upload files; prints one file id per line, in argument order.
    Upload(UploadArgs),
    /// Download a file by id.
    Download(DownloadArgs),
    /// Delete files by id.
    Delete(DeleteArgs),
    /// Show a file's size, type and ETag as JSON.
    Stat(StatArgs),
    /// Load-test a server: requests/s, MB/s and latency percentiles.
    Bench(BenchArgs),
    /// Print PATH with an expiring signature appended (SLUICE_URL_SECRET; with --upload or
    /// --publish, an upload or live publish link keyed with SLUICE_API_TOKEN).
    Sign(SignArgs),
}

impl Command {
    /// Whether this is a client command (it talks to servers and prints results) rather than a
    /// server role.
    pub fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Serve(_)
                | Command::Live(_)
                | Command::Tracker(_)
                | Command::Storage(_)
                | Command::Edge(_)
        )
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address for the HTTP API.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Group name, the prefix of every file id.
    #[arg(long)]
    pub group: Option<String>,
    /// Largest upload accepted (e.g. 64MiB, 10GiB).
    #[arg(long)]
    pub max_upload_size: Option<ByteSize>,
    /// Milliseconds between heartbeats to the trackers.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Most bytes of files this node holds (e.g. 500GiB); uploads past it get 507.
    #[arg(long)]
    pub capacity: Option<ByteSize>,
    /// Free space kept back; below it, trackers send this node no uploads.
    #[arg(long)]
    pub free_space_reserve: Option<ByteSize>,
}

#[derive(Args, Debug)]
pub struct ServeCmd {
    #[command(flatten)]
    pub node: ServeArgs,
    /// Address for RTMP (publish and play), e.g. 127.0.0.1:1935; live streaming is off
    /// without it (or `rtmp` in the config file).
    #[arg(long)]
    pub rtmp: Option<SocketAddr>,
    /// Record every publish into storage as an MP4 (listed at /v1/live/recordings).
    #[arg(long)]
    pub record: bool,
}

#[derive(Args, Debug)]
pub struct LiveArgs {
    /// TOML config file (its `[live]` section); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for RTMP (publish and play) [default: 127.0.0.1:1935].
    #[arg(long)]
    pub rtmp: Option<SocketAddr>,
    /// Address for HTTP-FLV, HLS and the stream list [default: 127.0.0.1:8090].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Trackers of the cluster (where recordings are stored); repeat for several.
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
    /// Record every publish into the cluster's storage (needs --tracker).
    #[arg(long)]
    pub record: bool,
    /// Directory for recordings in progress and the recordings list [default: sluice-live].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run without SLUICE_CLUSTER_SECRET, with cluster routes open to anyone who can reach
    /// this port: for a lab only.
    #[arg(long)]
    pub insecure_no_cluster_secret: bool,
}

#[derive(Args, Debug)]
pub struct StorageArgs {
    #[command(flatten)]
    pub node: ServeArgs,
    /// A tracker to register with; repeat for several (or `trackers` in the config).
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
    /// The URL clients and peers should use for this node (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Run without SLUICE_CLUSTER_SECRET, with cluster routes open to anyone who can reach
    /// this port: for a lab only.
    #[arg(long)]
    pub insecure_no_cluster_secret: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum PlacementArg {
    MostFree,
    RoundRobin,
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    /// TOML config file (its `[edge]` section); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where files come from on a miss: a `sluice serve`, a storage node or a tracker.
    #[arg(long)]
    pub origin: Option<String>,
    /// Address for the edge's HTTP API [default: 127.0.0.1:8088].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Cache directory (created if missing; survives restarts) [default: sluice-edge-cache].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Most bytes of files kept; least recently used files go first (e.g. `10GiB`)
    /// [default: 1GiB].
    #[arg(long)]
    pub cache_size: Option<ByteSize>,
    /// The region this edge serves (trackers route clients of that region here).
    #[arg(long)]
    pub region: Option<String>,
    /// A tracker to register with; repeat for several.
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
    /// The URL clients should use for this edge (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Memory for the cache of small hot files [default: 256MiB].
    #[arg(long)]
    pub hot_cache_size: Option<ByteSize>,
    /// Connections served at once [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Serve HTML, SVG, XML and JavaScript files inline (still sandboxed) rather than as
    /// attachments.
    #[arg(long)]
    pub active_content_inline: bool,
    /// Run without SLUICE_CLUSTER_SECRET, with cluster routes open to anyone who can reach
    /// this port: for a lab only.
    #[arg(long)]
    pub insecure_no_cluster_secret: bool,
}

#[derive(Args, Debug)]
pub struct TrackerArgs {
    /// TOML config file (its `[tracker]` section); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for the tracker's HTTP API [default: 127.0.0.1:9090].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Directory for the tracker's members file [default: sluice-tracker].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Milliseconds without a heartbeat before a node is marked offline [default: 6000].
    #[arg(long)]
    pub offline_after_ms: Option<u64>,
    /// How uploads are spread over groups [default: most-free].
    #[arg(long, value_enum)]
    pub placement: Option<PlacementArg>,
    /// Clients from an address prefix belong to a region, e.g. `10.8.0.0/16=eu`; repeat.
    /// `GET /v1/route/{fileid}` sends them to an edge of that region.
    #[arg(long = "region-map", value_name = "PREFIX=REGION")]
    pub region_map: Vec<String>,
    /// A proxy in front of this tracker whose X-Forwarded-For is believed; repeat.
    #[arg(long = "trusted-proxy", value_name = "PREFIX")]
    pub trusted_proxies: Vec<String>,
    /// Run without SLUICE_CLUSTER_SECRET, with cluster routes open to anyone who can reach
    /// this port: for a lab only.
    #[arg(long)]
    pub insecure_no_cluster_secret: bool,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: Option<ClusterAction>,
    /// A tracker to ask; repeat for several (the first that answers is used).
    #[arg(long = "tracker", global = true)]
    pub trackers: Vec<String>,
    /// Print the cluster view as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Retire a storage node from its group for good, on every tracker given. Refused while
    /// the node is up or no other active node of its group holds its files, unless --force.
    /// Needs SLUICE_CLUSTER_SECRET when the cluster has one.
    Remove {
        /// The node's id (see `sluice cluster`).
        node: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct ServerArg {
    /// Base URL of a Sluice server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "SLUICE_SERVER")]
    pub server: String,
}

/// Where file commands go: one server, or a cluster's trackers.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct TargetArg {
    /// Base URL of a Sluice server (a storage node or `sluice serve`).
    #[arg(long, env = "SLUICE_SERVER")]
    pub server: Option<String>,
    /// A tracker of a cluster; repeat for several (tried in turn).
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: TargetArg,
    /// Send images progressively: baseline JPEG and PNG become progressive JPEG, and each id
    /// prints the moment the server commits the file (at its minimal transport size) while
    /// the rest uploads.
    #[arg(long)]
    pub progressive: bool,
    /// Share of the file that must arrive before it gets its id (0 < q <= 1); default: chosen
    /// from the throughput measured on the first chunks.
    #[arg(long, requires = "progressive", value_parser = parse_q)]
    pub q: Option<f64>,
    /// Bytes per PATCH (each answer acknowledges what arrived).
    #[arg(long, requires = "progressive", default_value = "16KiB")]
    pub chunk: sluice_proto::ByteSize,
    /// Send at most this many bytes per second (e.g. `100KiB`).
    #[arg(long, requires = "progressive")]
    pub limit_rate: Option<sluice_proto::ByteSize>,
    /// Without --q: how soon the id should come on the link measured, in milliseconds.
    #[arg(long, requires = "progressive", default_value_t = 1500)]
    pub id_budget_ms: u64,
    /// Who sends, for the server's events (the IM user id).
    #[arg(long, requires = "progressive")]
    pub sender: Option<String>,
    /// Who receives, for the server's events.
    #[arg(long, requires = "progressive")]
    pub receiver: Option<String>,
}

fn parse_q(text: &str) -> Result<f64, String> {
    sluice_proto::tus::parse_q(text).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    pub fileid: String,
    #[command(flatten)]
    pub target: TargetArg,
    /// Where to write the file (`-` for stdout); default: the id's last part in the current directory.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub fileids: Vec<String>,
    #[command(flatten)]
    pub target: TargetArg,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    pub fileid: String,
    #[command(flatten)]
    pub target: TargetArg,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The URL path, e.g. /v1/files/g1/k5x2...
    pub path: String,
    /// Seconds the link stays valid.
    #[arg(long)]
    pub ttl: u64,
    /// Sign an upload link (for a phone to upload with, without the API token).
    #[arg(long)]
    pub upload: bool,
    /// Sign a live publish link for PATH = /APP/STREAM (keyed with SLUICE_API_TOKEN): publish
    /// to rtmp://HOST/APP/STREAM?expires=...&sig=... as printed.
    #[arg(long, conflicts_with = "upload")]
    pub publish: bool,
    /// For --upload: the largest body the link allows.
    #[arg(long)]
    pub max_size: Option<ByteSize>,
    /// For --upload: the method the link allows.
    #[arg(long, default_value = "POST")]
    pub method: String,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum BenchMode {
    Upload,
    Download,
    /// One publisher of a generated stream and N players (`--rtmp`, `--players`).
    Live,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LiveProtocolArg {
    Rtmp,
    Flv,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    pub mode: BenchMode,
    /// Base URL of a Sluice server (upload and download).
    #[arg(long, env = "SLUICE_SERVER")]
    pub server: Option<String>,
    /// live: the stream to publish and play, rtmp://host:port/app/stream.
    #[arg(long)]
    pub rtmp: Option<String>,
    /// live: the stream's HTTP-FLV URL, for `--protocol flv`.
    #[arg(long)]
    pub flv: Option<String>,
    /// live: how players play.
    #[arg(long, value_enum, default_value = "rtmp")]
    pub protocol: LiveProtocolArg,
    /// live: players.
    #[arg(long, default_value_t = 100)]
    pub players: usize,
    /// live: seconds the players play.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// live: bits per second of the generated stream (e.g. 600000).
    #[arg(long, default_value_t = 600_000)]
    pub bitrate: u64,
    /// Concurrent connections.
    #[arg(short = 'c', long = "connections", default_value_t = 16)]
    pub connections: usize,
    /// Total requests.
    #[arg(short = 'n', long = "requests", default_value_t = 10_000)]
    pub requests: usize,
    /// Size of each file (e.g. 5KB, 64KiB, 1MiB).
    #[arg(long, default_value = "64KiB")]
    pub size: ByteSize,
    /// For downloads: distinct files uploaded first and then read in random order.
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}
