//! reflow-agent: a sidecar agent for batch compute fleets.
//!
//! Producers put alloc/exec commands (or whole jobs) on a message queue; every worker machine runs
//! one agent, which runs each exec as a container on the local Docker engine, keeps inputs and
//! outputs in a content-addressed repository, and publishes manifests and state changes. The
//! semantics follow GRAIL Reflow's `local` package; the JSON shapes marked compatible there
//! (Fileset, ExecConfig, Result, Manifest, errors) are kept so Reflow users can read them.
//!
//! # Layout
//! - [`error`]: Reflow's error kinds, the one retry classifier, the wire error.
//! - [`digest`], [`fileset`], [`resources`], [`model`], [`profile`], [`manifest`]: the data model.
//! - [`relpath`]: validation of untrusted relative paths before any filesystem join.
//! - [`repo`]: the content-addressed file repository.
//! - [`persist`]: atomic, fsynced state files; bounded reads; crash leftovers.
//! - [`docker`]: the container runtime port, its bollard adapter, registry authentication.
//! - [`executor`]: Reflow's executor on the container runtime: execs, manifests, recovery.
//! - [`cgroup`]: cgroup v1/v2 discovery and counters.
//! - [`protocol`]: the versioned command/event envelope and its strict decoder.
//! - [`queue`]: the queue port and its backends (`spool://`, `amqp://`, `sqs://`).
//! - [`control`]: the control plane: commands to pool calls, journal, outbox, drain.
//! - [`pool`]: the pool of allocs (offers, keepalives, reclaim, restore, zombies).
//! - [`taskdb`]: the TaskDB port (pool and alloc rows).
//! - [`oom`]: OOM evidence from the engine, cgroups, the kernel log, logs and the node.
//! - [`aws`]: AWS SDK configuration from the standard chain.
//! - [`features`]: which optional backends (cargo features) this build carries.
//! - [`failpoint`]: failure injection for crash tests (cargo feature `failpoints`).
//! - [`clock`], [`time`]: the clock port and Go-compatible timestamps.
//! - [`par`]: parallel map for hashing many files.
//! - [`config`], [`agent`]: the configuration and the wiring that runs the agent (`serve`).
//! - [`cli`], [`telemetry`]: the command line and logging.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod aws;
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
pub mod resources;
pub mod taskdb;
pub mod telemetry;
pub mod time;
