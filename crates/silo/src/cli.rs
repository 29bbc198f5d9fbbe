//! Every flag of every command, with its default. The rest of the binary reads its
//! configuration from these structs only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where silo keeps its catalog, node state and templates unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/silo";

#[derive(Debug, Parser)]
#[command(
    name = "silo",
    version,
    about = "Secure, self-hosted sandboxes for AI agents (E2B-compatible, isolated by gVisor)",
    long_about = "Secure, self-hosted sandboxes for AI agents.\n\n\
        `silo serve` runs the control plane, the sandbox proxy and this host's sandboxes on one \
        port; the official E2B SDKs talk to it unchanged. Quick start:\n\n  \
        sudo silo template build -n base\n  sudo silo serve\n  \
        export E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:3000 \
        E2B_API_KEY=$(sudo silo keys)\n  silo sandbox create base"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API, the sandbox proxy and this host's sandboxes (needs root).
    Serve(ServeArgs),
    /// Print the API keys clients pass as E2B_API_KEY (creates the first one).
    Keys(KeysArgs),
    /// Create, list, run commands in and kill sandboxes on a running server.
    Sandbox(SandboxArgs),
    /// Build and list sandbox templates.
    Template(TemplateArgs),
    /// Serve MCP on stdin/stdout for an MCP client (Claude Desktop, an agent): tools to
    /// run code and commands in a sandbox of a running server, read, write and list its
    /// files, create and kill sandboxes. The session's own sandbox is created on first
    /// use and killed when the client goes.
    Mcp(McpArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Where the catalog (catalog.db), node state and the agent live.
    #[arg(long, global = true, env = "SILO_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where templates are built and read [default: <data-dir>/templates].
    #[arg(long, global = true, env = "SILO_TEMPLATE_DIR")]
    pub template_dir: Option<PathBuf>,
}

impl DataDirArgs {
    pub fn template_dir(&self) -> PathBuf {
        self.template_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("templates"))
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join("catalog.db")
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for the API and the sandbox proxy.
    #[arg(long, env = "SILO_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub dirs: DataDirArgs,
    /// The static silo-agent binary put into every sandbox [default: silo-agent next to
    /// this executable].
    #[arg(long, env = "SILO_AGENT")]
    pub agent: Option<PathBuf>,
    /// The runsc binary.
    #[arg(long, default_value = "/usr/bin/runsc")]
    pub runsc: PathBuf,
    /// gVisor platform: systrap, ptrace, or kvm where the host's KVM works.
    #[arg(long, default_value = "systrap")]
    pub platform: String,
    /// How a paused sandbox is held: `freeze` (no CPU, memory kept, resumes in
    /// milliseconds, survives restarts of silo) or `checkpoint` (saved to disk: no CPU,
    /// no memory; experimental with runsc 20240729, see docs/adr/0006-pause.md).
    #[arg(long, default_value = "freeze", value_parser = ["freeze", "checkpoint"])]
    pub pause_mode: String,
    /// Keep SIZE sandboxes of template NAME booted ahead of demand (repeatable): a
    /// create that asks for no other resources gets one at once (its env vars, metadata,
    /// timeout, token and network rules applied at hand-out), and the pool refills in
    /// the background while the host has memory to spare.
    #[arg(long = "pool", value_name = "NAME=SIZE", value_parser = parse_pool)]
    pub pools: Vec<(String, usize)>,
    /// A registry (`host:port`) that template builds pull `FROM` images from over plain
    /// http rather than https (repeatable), e.g. a local `docker-registry`.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Days the template build cache keeps what no build used: step layers (what makes
    /// an unchanged step cached), images unpacked for FROM, uploaded build contexts. Looked
    /// at after each build and at start-up.
    #[arg(long, value_name = "DAYS", default_value_t = silo_node::builds::DEFAULT_CACHE_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub build_cache_days: u32,
    /// Private range sandbox addresses come from, one /30 each. It must not overlap a
    /// network this host uses; two servers on one host need two ranges (a range the host
    /// already routes elsewhere is refused at start-up).
    #[arg(long, default_value = "10.213.0.0/16", value_parser = parse_subnet)]
    pub subnet: (std::net::Ipv4Addr, u8),
    /// Resolver (`ip` or `ip:port`) answering the allowed names of sandboxes with host
    /// names in allowOut, unless their `dnsServers` name one [default: the first
    /// nameserver of /etc/resolv.conf].
    #[arg(long, value_parser = parse_resolver)]
    pub dns_upstream: Option<SocketAddr>,
    /// Domain sandboxes are reached under, as `{port}-{id}.{domain}` (needs wildcard DNS).
    #[arg(long, env = "SILO_DOMAIN")]
    pub domain: Option<String>,
    /// Seconds a sandbox lives when the client does not say.
    #[arg(long, default_value_t = 300, value_parser = timeout_secs())]
    pub default_timeout: u64,
    /// Longest lifetime a client may ask for, in seconds (at most 100 years).
    #[arg(long, default_value_t = 86_400, value_parser = timeout_secs())]
    pub max_timeout: u64,
    /// Memory of a sandbox whose create does not say, in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mb: u32,
    /// CPUs of a sandbox whose create does not say.
    #[arg(long, default_value_t = 2)]
    pub cpu_count: u32,
    /// Room for a sandbox's writes (root filesystem and /tmp) when its create does not
    /// say, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub disk_size_mb: u32,
    /// Most CPUs a create may ask for (`cpuCount`) [default: this host's CPUs].
    #[arg(long)]
    pub max_cpu_count: Option<u32>,
    /// Most memory a create may ask for (`memoryMB`) [default: this host's memory].
    #[arg(long)]
    pub max_memory_mb: Option<u32>,
    /// Most disk a create may ask for (`diskSizeMB`), in MiB.
    #[arg(long, default_value_t = 10_240)]
    pub max_disk_size_mb: u32,
    /// Processes and threads each user in a sandbox may have (RLIMIT_NPROC); a fork
    /// bomb stops there.
    #[arg(long, default_value_t = 512)]
    pub pids_limit: u32,
    /// Seconds between two samples of each running sandbox's CPU, memory and disk (what
    /// the SDK's `get_metrics` returns), and between two collections of its logs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_interval: u64,
    /// Which running sandboxes doze: are frozen in place once idle (`--doze-after`), so
    /// they cost no CPU (an idle gVisor sandbox otherwise burns a few % of a core); the
    /// next request thaws one at once, unnoticed.
    #[arg(long, value_enum, default_value_t = Doze::Empty)]
    pub doze: Doze,
    /// Seconds without a request to a sandbox before it dozes. 0: never (as `--doze
    /// never`).
    #[arg(long, default_value_t = 30)]
    pub doze_after: u64,
    /// Hours a killed sandbox stays browsable (its logs, timeline and metrics); then it
    /// is forgotten.
    #[arg(long, default_value_t = 24)]
    pub retention_hours: u64,
    /// Seconds an MCP session on `/mcp` may stay idle before it is closed; its own
    /// sandbox lives as long past its last use, and is killed when the session closes.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub mcp_idle_timeout: u64,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub dirs: DataDirArgs,
    /// Without a command: print the keys (creating the first on a fresh data dir).
    #[command(subcommand)]
    pub command: Option<KeysCommand>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it; it works at once, also on a running server.
    Create,
    /// List the keys with their creation time.
    Ls,
    /// Revoke a key: requests with it get 401 at once.
    Revoke {
        /// The key, as `silo keys` prints it.
        key: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// URL of a running `silo serve`.
    #[arg(
        long,
        global = true,
        env = "E2B_API_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub api_url: String,
    /// API key (see `silo keys`).
    #[arg(long, global = true, env = "E2B_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ClientArgs {
    /// The API key, or an error that says where to get one.
    pub fn api_key(&self) -> anyhow::Result<&str> {
        self.api_key.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "no API key: pass --api-key or set E2B_API_KEY (`silo keys` on the server prints it)"
            )
        })
    }
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// List sandboxes, newest first: running and paused ones unless --state says.
    #[command(
        after_help = "Examples:\n  silo sandbox ls --metadata user=alice\n  silo sandbox ls --state killed --template base\n  silo sandbox ls -q | xargs -r silo sandbox pause"
    )]
    Ls {
        #[command(flatten)]
        filter: ListArgs,
        /// Print only the ids, one per line.
        #[arg(short, long)]
        quiet: bool,
        /// Print the list as JSON, as the API answers it.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
    /// Create a sandbox and print its id.
    #[command(
        after_help = "Examples:\n  silo sandbox create\n  silo sandbox create code-interpreter --timeout 3600 --on-timeout pause --auto-resume\n  silo sandbox create --env API_URL=http://10.0.0.5 --no-internet --allow-out 10.0.0.5"
    )]
    Create {
        /// Template name or alias.
        #[arg(default_value = "base")]
        template: String,
        /// Seconds until the sandbox times out [default: the server's --default-timeout].
        #[arg(long)]
        timeout: Option<u64>,
        /// What its timeout does: kill it, or pause it (then `resume` goes on).
        #[arg(long, value_enum, default_value_t = OnTimeoutArg::Kill)]
        on_timeout: OnTimeoutArg,
        /// Resume it when traffic comes for it while paused (its commands, files, ports).
        #[arg(long)]
        auto_resume: bool,
        /// Metadata as key=value (repeatable).
        #[arg(long = "metadata", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
        /// An environment variable of every process in it, as KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        envs: Vec<(String, String)>,
        /// Require its access token for commands and files (this CLI fetches it).
        #[arg(long)]
        secure: bool,
        /// No outbound internet access but what --allow-out allows.
        #[arg(long)]
        no_internet: bool,
        /// Allow outbound traffic to this address, CIDR or domain (repeatable; wins over
        /// --deny-out and --no-internet).
        #[arg(long = "allow-out")]
        allow_out: Vec<String>,
        /// Deny outbound traffic to this address or CIDR (repeatable).
        #[arg(long = "deny-out")]
        deny_out: Vec<String>,
        #[command(flatten)]
        resources: ResourceArgs,
    },
    /// Run a shell command in a sandbox; exits with the command's exit code.
    ///
    /// Output streams as it comes, stdout to stdout and stderr to stderr. A paused
    /// sandbox is not resumed: `silo sandbox resume` it first.
    #[command(
        after_help = "Examples:\n  silo sandbox exec ID 'ls -la /tmp'\n  silo sandbox exec --user root --cwd /etc ID cat os-release\n  silo sandbox exec --env DEBUG=1 --timeout 30 ID python3 main.py"
    )]
    Exec {
        /// Sandbox id.
        id: String,
        /// The command, run with `bash -l -c` (words are joined with spaces).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
        #[command(flatten)]
        process: ProcessArgs,
        /// Pass this stdin to the command (it reads its end when stdin ends); without,
        /// the command's stdin is empty.
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Kill the command after this many seconds; this then exits with 124, as
        /// coreutils' `timeout` does (a command killed otherwise by a signal: 137).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
    },
    /// Open an interactive login shell in a sandbox on this terminal, as `docker exec
    /// -it ID bash` does; exits with the shell's exit code.
    ///
    /// Keys go to the sandbox as typed (Ctrl-C interrupts what runs there), a resize of
    /// this window resizes its terminal; `exit` or Ctrl-D ends it. With stdin not a
    /// terminal (a pipe, a file), what it reads is typed in, then Ctrl-D.
    #[command(
        after_help = "Examples:\n  silo sandbox shell ID\n  silo sandbox shell --user root --cwd /var/log ID\n  printf 'cd /tmp\\nls\\nexit\\n' | silo sandbox shell ID"
    )]
    Shell {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        process: ProcessArgs,
    },
    /// Copy a file into or out of a sandbox, as `docker cp` does.
    ///
    /// One side is ID:PATH, a path in the sandbox (relative ones start at the user's
    /// home); the other a local path, or - for stdin or stdout. Copying into a local
    /// directory keeps the file's name. A download lands whole or not at all, and so
    /// does an upload: a copy cut short leaves the old file. Parents are created in
    /// the sandbox, not locally.
    #[command(
        after_help = "Examples:\n  silo sandbox cp main.py ID:/home/user/main.py\n  silo sandbox cp ID:/tmp/out.csv .\n  tar czf - src | silo sandbox cp - ID:/tmp/src.tgz"
    )]
    Cp {
        /// What to copy: a local path, - (stdin) or ID:PATH.
        source: String,
        /// Where to: a local path, - (stdout) or ID:PATH.
        destination: String,
        /// The user the sandbox side is read or written as [default: the template's].
        #[arg(long, short = 'u')]
        user: Option<String>,
    },
    /// Pause sandboxes: their processes, files and memory are kept, they use no CPU and
    /// no timeout ends them; `silo sandbox resume` goes on where they were.
    Pause {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Resume paused sandboxes (a running one is left running, its life extended to
    /// --timeout if that is longer).
    Resume {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Seconds they live from now [default: the server's default timeout].
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print a sandbox's log and timeline: lifecycle events (created, paused, resumed,
    /// killed, and why), processes started and their exit codes, and their output line
    /// by line. A killed sandbox's log stays readable for `silo serve --retention-hours`.
    Logs {
        /// Sandbox id.
        id: String,
        /// Keep printing new entries as they come (collected every few seconds) until
        /// the sandbox is killed or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print a sandbox's CPU, memory and disk use, as sampled every
    /// `silo serve --metrics-interval` seconds (kept for --retention-hours).
    Metrics {
        /// Sandbox id.
        id: String,
        /// Keep printing samples as they are taken, until the sandbox is killed or
        /// Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// Kill sandboxes: those named, or with --all every one the filters pick.
    #[command(
        after_help = "Examples:\n  silo sandbox kill ID ID2\n  silo sandbox kill --all --metadata job=nightly"
    )]
    Kill {
        /// Sandbox ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every sandbox the filters pick (running and paused ones unless --state says).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: ListArgs,
    },
}

/// What a sandbox's timeout does (`silo sandbox create --on-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnTimeoutArg {
    Kill,
    Pause,
}

/// Which sandboxes `ls` and `kill --all` take.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only those in these states: running, paused, killed (comma-separated or
    /// repeated; killed ones are kept for `silo serve --retention-hours`)
    /// [default: running,paused].
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<silo_protocol::rest::SandboxState>,
    /// Only those with this metadata entry, as key=value (repeatable: all must match).
    #[arg(long = "metadata", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Only those of this template (a name or an alias).
    #[arg(long)]
    pub template: Option<String>,
}

impl ListArgs {
    pub fn query(self) -> silo_client::ListQuery {
        silo_client::ListQuery {
            states: self.state,
            metadata: self.metadata.into_iter().collect(),
            template: self.template,
        }
    }
}

fn parse_state(s: &str) -> Result<silo_protocol::rest::SandboxState, String> {
    use silo_protocol::rest::SandboxState;
    [
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Killed,
    ]
    .into_iter()
    .find(|state| state.as_str() == s)
    .ok_or_else(|| format!("{s:?} is not a state: running, paused or killed"))
}

/// Who runs a process in a sandbox, where, with what environment.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// An environment variable as KEY=VALUE (repeatable), added to the sandbox's.
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub envs: Vec<(String, String)>,
    /// Working directory [default: the user's home].
    #[arg(long, short = 'w')]
    pub cwd: Option<String>,
    /// The user to run as, e.g. root [default: the template's user].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
}

impl ProcessArgs {
    /// These, with `limit`, as the client takes them.
    pub fn options(self, limit: Option<std::time::Duration>) -> silo_client::RunOptions {
        silo_client::RunOptions {
            envs: self.envs.into_iter().collect(),
            cwd: self.cwd,
            user: self.user,
            limit,
        }
    }
}

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Template of the session's own sandbox (run_code needs code-interpreter).
    #[arg(long, default_value = "code-interpreter")]
    pub template: String,
    /// Seconds the session's sandbox lives past its last use (it is killed when the
    /// session ends anyway; this bounds it if that end is never seen).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub sandbox_timeout: u64,
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Where silo's own templates are built (`build -n base|code-interpreter` runs on
    /// this host, before any server; everything else asks the running server).
    #[command(flatten)]
    pub dirs: DataDirArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TemplateCommand,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template: yours from a Dockerfile, on the running server, or silo's own
    /// (`-n base`, `-n code-interpreter`) on this host. Steps whose layer was built
    /// before are reused, so an unchanged rebuild runs nothing.
    ///
    /// Dockerfiles may use FROM (a silo template), RUN (run in a gVisor sandbox with a
    /// sandbox's network: the internet, not the host), COPY and ADD (from CONTEXT, honouring .dockerignore, with
    /// --chown/--chmod), ENV, ARG, WORKDIR, USER and LABEL. ENV, WORKDIR and USER become
    /// the defaults of the template's sandboxes. The context is uploaded to the server
    /// (only when it changed), the build's log streams here, and the template is
    /// registered only if every step, and the ready command, succeed.
    #[command(
        after_help = "Examples:\n  silo template build -n base\n  silo template build -n my-agent .\n  silo template build -n web --start-cmd 'python3 -m http.server 8000' --ready-cmd 'curl -sf localhost:8000' .\n  silo template build -n my-agent -f docker/Agent.Dockerfile --build-arg VERSION=2 .\n  silo template build -n my-agent:v2 -t stable ."
    )]
    Build {
        /// Template name; sandboxes start from it with `template="NAME"`. As
        /// NAME:TAG, the new build is also tagged TAG once ready (`template="NAME:TAG"`
        /// starts from it while NAME moves on to newer builds).
        #[arg(short = 'n', long = "name")]
        name: String,
        /// Another tag for the new build (repeatable). Every build that becomes ready is
        /// also tagged `default`, which the bare NAME means.
        #[arg(short = 't', long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The Dockerfile [default: CONTEXT/Dockerfile].
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Directory COPY and ADD take files from [default: .].
        context: Option<PathBuf>,
        /// A value for an ARG, as NAME=VALUE (repeatable).
        #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_key_value)]
        build_args: Vec<(String, String)>,
        /// A command every sandbox of the template runs as it starts (as its default
        /// user, left running), e.g. a server.
        #[arg(long)]
        start_cmd: Option<String>,
        /// A command run until it exits 0 before a sandbox is handed out (and before
        /// the template counts as built), e.g. `curl -sf localhost:8000`.
        #[arg(long)]
        ready_cmd: Option<String>,
        /// Rebuild every step, whatever is cached.
        #[arg(long)]
        no_cache: bool,
        /// silo's own templates: also remove their older builds. Only safe when no
        /// sandbox started from them is running: their rootfs is its lower layer.
        #[arg(long)]
        prune: bool,
        /// The template's defaults (a create may ask otherwise, within the server's
        /// maximums).
        #[command(flatten)]
        resources: ResourceArgs,
    },
    /// List the server's templates.
    #[command(alias = "ls")]
    List,
    /// Show a template: defaults, aliases, builds (JSON).
    Inspect {
        /// Template name or alias.
        name: String,
    },
    /// Delete a template and all its builds; refused while sandboxes or snapshots use
    /// it.
    Delete {
        /// Template name or alias.
        name: String,
    },
    /// Give a template another name to create sandboxes by (moves an alias that
    /// exists).
    Alias {
        /// The new name.
        alias: String,
        /// The template it names.
        template: String,
    },
    /// Remove an alias (the template stays).
    Unalias { alias: String },
    /// List a template's tags and the builds they name.
    Tags {
        /// Template name or alias.
        name: String,
    },
    /// Give the build TARGET names more tags; a tag another build has moves to it.
    #[command(
        after_help = "Examples:\n  silo template tag my-agent:v2 prod        # prod now names the build v2 names\n  silo template tag my-agent prod canary    # the default (newest) build"
    )]
    Tag {
        /// NAME:TAG, or NAME for its default (newest) build.
        target: String,
        /// The tags to give it.
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags of a template, all or none (its builds stay; `default` moves with
    /// each new build and cannot be removed).
    Untag {
        /// Template name or alias.
        name: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
}

/// A sandbox's resources, each optional.
#[derive(Debug, Args)]
pub struct ResourceArgs {
    /// CPUs [default: the template's, else the server's].
    #[arg(long, visible_alias = "cpu")]
    pub cpu_count: Option<u32>,
    /// Memory in MiB [default: the template's, else the server's].
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Disk for its writes (/ and /tmp) in MiB [default: the template's, else the
    /// server's].
    #[arg(long)]
    pub disk_size_mb: Option<u32>,
}

impl ResourceArgs {
    pub fn resources(&self) -> silo_protocol::rest::Resources {
        silo_protocol::rest::Resources {
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_size_mb: self.disk_size_mb,
        }
    }
}

fn parse_subnet(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR range like 10.213.0.0/16"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|len| (8..=28).contains(len))
        .ok_or_else(|| format!("prefix length {len:?} must be between 8 and 28"))?;
    Ok((ip, len))
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?} is not an address (ip or ip:port)"))
}

fn parse_pool(s: &str) -> Result<(String, usize), String> {
    let (name, size) = parse_key_value(s)?;
    let size = size
        .parse()
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| format!("{s:?}: SIZE must be a number from 0 to 1000"))?;
    Ok((name, size))
}

/// A sandbox lifetime in seconds: end times are milliseconds in an i64, so "forever"
/// is capped at 100 years rather than overflowing into the past.
fn timeout_secs() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=100 * 365 * 24 * 3600)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Which idle sandboxes `silo serve` freezes (`--doze`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Doze {
    /// Those in which nothing runs but silo's agent: nothing in them could notice.
    Empty,
    /// Also those still running processes no request started (a daemon a command left
    /// behind, an interpreter kernel): they sleep with the sandbox until its next
    /// request.
    Idle,
    /// None (pooled sandboxes still doze until handed out).
    Never,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_lifetime_too_long_for_an_end_time_is_refused() {
        let serve = |flag: &str, secs: &str| Cli::try_parse_from(["silo", "serve", flag, secs]);
        assert!(serve("--max-timeout", &u64::MAX.to_string()).is_err());
        assert!(serve("--default-timeout", "0").is_err());
        assert!(serve("--max-timeout", "3153600000").is_ok(), "100 years");
    }

    #[test]
    fn directory_flags_go_after_the_subcommand_too() {
        let cli = Cli::try_parse_from([
            "silo",
            "template",
            "build",
            "-n",
            "base",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::Template(args) = cli.command else {
            panic!("not template")
        };
        assert_eq!(args.dirs.template_dir(), PathBuf::from("/d/templates"));
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["silo", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(args.dns_upstream, None);
        assert_eq!(args.dirs.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            args.dirs.template_dir(),
            PathBuf::from("/var/lib/silo/templates")
        );
    }
}
