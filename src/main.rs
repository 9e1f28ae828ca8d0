//! The `onair` command line: parse arguments, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use onair::config::{Config, Overrides};
use onair::server::{self, RunOptions, StartError};

/// mimalloc instead of glibc malloc: the proxy allocates and frees many small buffers per
/// request, and glibc's allocator showed up at ~11 % of CPU in the pass-through profile
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "onair",
    version,
    about = "An edge cache and origin proxy that keeps sites on air"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[command(flatten)]
        source: ConfigArgs,
        /// Take the listeners over from a running onair (graceful upgrade; then SIGQUIT the old one).
        #[arg(short = 'u', long = "upgrade")]
        upgrade: bool,
    },
    /// Validate a config file: prints `config ok`, or every error with its key path.
    Check {
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// Run a self-contained showcase on 127.0.0.1:8080 with sample origins.
    Demo,
    /// Serve the demo's sample news site alone (the local fleet's origin; see scripts/fleet.sh).
    SampleOrigin {
        /// Address to listen on, e.g. 127.0.0.1:8000.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The name shown in `X-Origin` and page footers.
        #[arg(long, default_value = "origin")]
        name: String,
    },
    /// Sign a fleet operation with an operator's key and publish it to the bus (NATS
    /// JetStream): every node it is meant for applies it, now or when it is back.
    Fleet {
        #[command(subcommand)]
        op: FleetOp,
        /// A node's config file: its [fleet] gives the servers, credentials, stream, subject.
        #[arg(short = 'c', long = "config", global = true)]
        config: Option<PathBuf>,
        /// NATS URLs, comma-separated (over the config's).
        #[arg(long, global = true, value_delimiter = ',')]
        servers: Vec<String>,
        /// The operator's private key (PEM, `openssl genpkey -algorithm ed25519`).
        #[arg(long, global = true)]
        key: Option<PathBuf>,
        /// The operator's NATS user (an NKey seed file), over the config's credentials.
        #[arg(long, global = true)]
        nkey: Option<PathBuf>,
        /// Only the nodes of this region.
        #[arg(long, global = true, conflicts_with = "nodes")]
        region: Option<String>,
        /// Only these nodes (ids, comma-separated).
        #[arg(long, global = true, value_delimiter = ',')]
        nodes: Vec<String>,
    },
    /// Make an Ed25519 key pair to sign content with: NAME.key (the private key, PKCS#8 PEM,
    /// mode 0600, never overwritten) and NAME.pub (the public key, for [site.integrity] keys).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a file as an origin serves it: prints the Content-Type, Content-Digest,
    /// Signature-Input and Signature headers to send with it.
    Sign {
        /// The file (the response body).
        file: PathBuf,
        /// The private key (PEM, from `onair keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// The key's id, as the sites' [site.integrity] keys name it.
        #[arg(long = "key-id")]
        key_id: String,
        /// The URL path it is served at (the signature covers it).
        #[arg(long)]
        path: String,
        #[arg(long = "content-type")]
        content_type: String,
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// The signature's label.
        #[arg(long, default_value = "newsroom")]
        label: String,
    },
    /// Print version and build information.
    Version,
}

#[derive(Subcommand)]
enum FleetOp {
    /// Purge by URL, prefix or tag (one kind per operation), everywhere in scope.
    Purge {
        /// An absolute URL (repeat for more).
        #[arg(long = "url")]
        urls: Vec<String>,
        /// A URL prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// A Surrogate-Key / Cache-Tag tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Mark stale instead of removing.
        #[arg(long)]
        soft: bool,
    },
    /// Attack mode: on, off or auto.
    AttackMode { mode: String },
    /// A scheduled release: its content under embargo until --at on every node in scope, then
    /// released by each at that instant (its own clock), with the purges given. The same --id
    /// again changes a pending release; --cancel ID calls one off.
    Release(Box<ReleaseArgs>),
    /// Every node's last heartbeat: who is up, who lags, who is in attack mode.
    Status,
    /// Make a NATS user key (NKey): NAME.nk (the seed, for fleet.nkey_file or --nkey; mode
    /// 0600) and NAME.pub (the public key, for the servers' authorization block).
    Nkey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Wait until every node that is not silent has applied operation SEQ.
    Wait {
        seq: u64,
        /// Give up after this many seconds (exit 1).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// `onair fleet release` (see `FleetOp::Release`).
#[derive(clap::Args)]
struct ReleaseArgs {
    /// When: RFC 3339 with a zone, e.g. 2027-01-20T10:00:00+07:00.
    #[arg(long, required_unless_present = "cancel")]
    at: Option<String>,
    /// The release's id (default: a new one).
    #[arg(long)]
    id: Option<String>,
    /// An embargoed URL (repeat for more).
    #[arg(long = "embargo-url")]
    embargo_urls: Vec<String>,
    /// A file of embargoed URLs, one per line.
    #[arg(long = "urls")]
    urls_file: Option<PathBuf>,
    /// An embargoed URL prefix.
    #[arg(long)]
    embargo_prefix: Option<String>,
    /// A file of URLs to fetch ahead, one per line.
    #[arg(long = "warm")]
    warm_file: Option<PathBuf>,
    /// Tags to purge at the release time (comma-separated).
    #[arg(long, value_delimiter = ',')]
    purge_tags: Vec<String>,
    /// URLs to purge at the release time (comma-separated).
    #[arg(long, value_delimiter = ',')]
    purge_urls: Vec<String>,
    /// A URL prefix to purge at the release time.
    #[arg(long)]
    purge_prefix: Option<String>,
    /// Mark stale instead of removing, at the release time.
    #[arg(long)]
    soft: bool,
    /// Call off the pending release with this id.
    #[arg(long, conflicts_with_all = ["at", "id", "embargo_urls", "urls_file", "embargo_prefix"])]
    cancel: Option<String>,
}

/// The config file and the command-line values that override it (`run` and `check` alike).
#[derive(clap::Args)]
struct ConfigArgs {
    /// The config file.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// This node's region (overrides node.region).
    #[arg(long)]
    region: Option<String>,
    /// This node's id (overrides node.id).
    #[arg(long = "node-id")]
    node_id: Option<String>,
}

impl ConfigArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            region: self.region.clone(),
            node_id: self.node_id.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { source, upgrade } => report(server::run(RunOptions {
            overrides: source.overrides(),
            config: source.config,
            upgrade,
        })),
        Command::Check { source } => match Config::load(&source.config, &source.overrides()) {
            Ok(config) => {
                // A name that does not resolve now is a warning, not an error: a node must be
                // able to start (and serve what it has) while DNS is down.
                for (name, why) in onair::origin::dns::check_names(&config) {
                    eprintln!("warning: origin name {name:?} does not resolve now: {why}");
                }
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    println!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Demo => report(onair::demo::run()),
        Command::SampleOrigin { listen, name } => {
            report(onair::demo::serve_sample_origin(listen, name))
        }
        Command::Fleet {
            op,
            config,
            servers,
            key,
            nkey,
            region,
            nodes,
        } => {
            let publisher = onair::fleet::cli::Publisher {
                config,
                servers,
                key,
                nkey,
            };
            let op = match op {
                FleetOp::Nkey { out } => {
                    return match onair::fleet::cli::nkey(&out) {
                        Ok(public) => {
                            println!("{public}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("onair fleet nkey: {e}");
                            ExitCode::FAILURE
                        }
                    };
                }
                FleetOp::Status => {
                    return match onair::fleet::cli::status(&publisher) {
                        Ok(table) => {
                            print!("{table}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("onair fleet: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                FleetOp::Wait { seq, timeout } => {
                    let timeout = std::time::Duration::from_secs(timeout);
                    return match onair::fleet::cli::wait(&publisher, seq, timeout) {
                        Ok(answer) => {
                            println!("{answer}");
                            if answer["done"] == true {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::FAILURE
                            }
                        }
                        Err(e) => {
                            eprintln!("onair fleet: {e}");
                            ExitCode::FAILURE
                        }
                    };
                }
                other => other,
            };
            let scope = match (region, nodes.is_empty()) {
                (Some(region), _) => onair::fleet::op::Scope::Region(region),
                (None, false) => onair::fleet::op::Scope::Nodes(nodes),
                (None, true) => onair::fleet::op::Scope::Fleet,
            };
            let action = match op {
                FleetOp::Purge {
                    urls,
                    prefix,
                    tags,
                    soft,
                } => onair::fleet::op::Action::Purge {
                    urls,
                    prefix,
                    tags,
                    soft,
                },
                FleetOp::AttackMode { mode } => onair::fleet::op::Action::AttackMode { mode },
                FleetOp::Release(args) => {
                    let ReleaseArgs {
                        at,
                        id,
                        embargo_urls,
                        urls_file,
                        embargo_prefix,
                        warm_file,
                        purge_tags,
                        purge_urls,
                        purge_prefix,
                        soft,
                        cancel,
                    } = *args;
                    if let Some(id) = cancel {
                        onair::fleet::op::Action::ReleaseCancel { id }
                    } else {
                        let lines = |file: Option<PathBuf>| -> Result<Vec<String>, String> {
                            let Some(file) = file else {
                                return Ok(Vec::new());
                            };
                            let text = std::fs::read_to_string(&file)
                                .map_err(|e| format!("{}: {e}", file.display()))?;
                            Ok(text
                                .lines()
                                .map(str::trim)
                                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                                .map(str::to_owned)
                                .collect())
                        };
                        let (mut urls, warm) = match (lines(urls_file), lines(warm_file)) {
                            (Ok(urls), Ok(warm)) => (urls, warm),
                            (Err(e), _) | (_, Err(e)) => {
                                eprintln!("onair fleet release: {e}");
                                return ExitCode::FAILURE;
                            }
                        };
                        urls.extend(embargo_urls);
                        let purge = onair::release::PurgeSpec {
                            urls: purge_urls,
                            prefix: purge_prefix,
                            tags: purge_tags,
                            soft,
                        };
                        let purge =
                            (purge != onair::release::PurgeSpec::default()).then_some(purge);
                        onair::fleet::op::Action::Release(onair::release::Spec {
                            id: id.unwrap_or_else(onair::release::Spec::new_id),
                            at: at.unwrap_or_default(),
                            embargo: onair::release::Embargo {
                                urls,
                                prefix: embargo_prefix,
                            },
                            warm,
                            purge,
                        })
                    }
                }
                FleetOp::Status | FleetOp::Wait { .. } | FleetOp::Nkey { .. } => {
                    return ExitCode::FAILURE
                }
            };
            match onair::fleet::cli::run(publisher, scope, action) {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("onair fleet: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keygen { out } => match onair::integrity::tools::keygen(&out) {
            Ok((private, public)) => {
                println!("{}\n{}", private.display(), public.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("onair keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sign {
            file,
            key,
            key_id,
            path,
            content_type,
            status,
            label,
        } => {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let signed = read(&file).and_then(|body| {
                let key_pem = read(&key)?;
                onair::integrity::tools::sign(&onair::integrity::tools::ToSign {
                    body: &body,
                    path: &path,
                    content_type: &content_type,
                    status,
                    key_pem: &key_pem,
                    key_id: &key_id,
                    label: &label,
                    created,
                })
            });
            match signed {
                Ok(headers) => {
                    for (name, value) in headers {
                        println!("{name}: {value}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("onair sign: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!(
                "onair {} (pingora 0.9.1, rustls/ring, {}-{}, {} build)",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS,
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            );
            ExitCode::SUCCESS
        }
    }
}

fn report(result: Result<(), StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(errors)) => {
            eprintln!("onair: the config has errors, not starting:");
            for e in &errors.0 {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
        Err(StartError::Io(e)) => {
            eprintln!("onair: {e}");
            ExitCode::FAILURE
        }
    }
}
