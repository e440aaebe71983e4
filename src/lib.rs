//! reflow-agent: a sidecar agent for batch compute fleets.
//!
//! Producers put alloc/exec commands (or whole jobs) on a message queue; every worker machine runs
//! one agent, which runs each exec as a container on the local Docker engine, keeps inputs and
//! outputs in a content-addressed repository, and publishes manifests and state changes. The
//! semantics follow GRAIL Reflow's `local` package; the JSON shapes marked compatible there
//! (Fileset, ExecConfig, Result, Manifest, errors) are kept so Reflow users can read them.
//!
//! # Layout
//!
//! Modules sit in layers, listed in [`LAYERS`] from the bottom up; a module imports only from
//! its own layer or those below, and no two modules import each other (`tests/layers.rs`
//! checks both on every `crate::` path outside test modules).
//!
//! 0. **Foundations.** [`error`]: Reflow's error kinds, the one retry classifier, the wire
//!    error. [`time`], [`clock`]: Go-compatible timestamps and the clock port. [`digest`]:
//!    SHA-256 digests. [`backoff`]: the one retry policy (capped, jittered). [`relpath`]:
//!    untrusted relative paths checked before any join.
//!    [`resources`]: CPU, memory and disk amounts. [`persist`]: atomic, fsynced state files,
//!    bounded reads, crash leftovers, pruning. [`par`]: parallel map for hashing many files, tasks aborted when dropped.
//!    [`failpoint`]: failure injection for crash tests. [`features`]: which optional backends
//!    this build carries. [`notify`]: systemd notifications. [`requests`]: cloud and broker
//!    requests, counted. [`telemetry`]: logging.
//! 1. **The data model.** [`profile`], [`fileset`], [`model`] (ExecConfig, Result, AllocMeta),
//!    [`cgroup`]: cgroup v1/v2 discovery and counters; [`oom`]: OOM evidence from the engine,
//!    cgroups, the kernel log and the node; [`manifest`]: versioned exec manifests;
//!    [`protocol`]: the command/event envelope and its strict decoder.
//! 2. **Edges: ports and their adapters.** [`repo`]: the content-addressed repository.
//!    [`blob`]: the blob store port and S3. [`docker`]: the container runtime port, bollard,
//!    registry authentication. [`taskdb`]: the TaskDB port, DynamoDB, fleet claims. [`aws`]:
//!    AWS SDK configuration. [`queue`]: the queue port (`spool://`, `amqp://`, `sqs://`).
//!    [`notice`]: EC2 spot and rebalance notices.
//! 3. **The core.** [`executor`]: Reflow's executor on the container runtime: execs,
//!    manifests, recovery. [`pool`]: allocs, offers, keepalives, reclaim, restore, zombies. [`imagegc`]: removing
//!    images the agent used and no longer needs.
//! 4. **The control plane and its surfaces.** [`metrics`]: the counters. [`control`]: commands
//!    to pool calls, journal, outbox, leases, drain. [`admin`]: the HTTP listener (`/metrics`,
//!    `/healthz`, `/readyz`, `/v1/status`).
//! 5. **Wiring.** [`config`]: the configuration, and [`config::Config::resolve`], which merges
//!    the file, the environment and the flags and applies every default (named once, in
//!    `config/resolved.rs`). [`agent`]: the [`agent::Ports`], built from the real adapters or
//!    from fakes, one cancellation tree ([`agent::Lifecycle`]) and the shutdown order.
//!    [`cli`]: the command line.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod aws;
pub mod backoff;
pub mod blob;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod digest;
pub mod docker;
pub mod error;
pub mod executor;
pub mod failpoint;
pub mod features;
pub mod fileset;
pub mod imagegc;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod notice;
pub mod notify;
pub mod oom;
pub mod par;
pub mod persist;
pub mod pool;
pub mod profile;
pub mod protocol;
pub mod queue;
pub mod relpath;
pub mod repo;
pub mod requests;
pub mod resources;
pub mod taskdb;
pub mod telemetry;
pub mod time;

/// The module layers, bottom first (see the crate docs, "Layout"): a module may import from its
/// own layer and those below, never from one above. `tests/layers.rs` enforces it.
pub const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "time",
        "clock",
        "backoff",
        "digest",
        "relpath",
        "resources",
        "persist",
        "par",
        "failpoint",
        "features",
        "notify",
        "requests",
        "telemetry",
    ],
    &[
        "profile", "fileset", "model", "cgroup", "oom", "manifest", "protocol",
    ],
    &["repo", "blob", "docker", "taskdb", "aws", "queue", "notice"],
    &["executor", "pool", "imagegc"],
    &["metrics", "control", "admin"],
    &["config", "agent", "cli"],
];
