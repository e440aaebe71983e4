//! The pool: Reflow's local pool of allocs on one machine. It offers the machine's resources,
//! creates allocs (each with its own [`Executor`] in `allocs/<id>/`), keeps them alive, reclaims
//! expired ones when room is needed, and restores them after a restart. Dead allocs stay
//! readable as zombies.
//!
//! On disk (under the pool directory):
//! ```text
//! state.json            {alloc id: resources} of the live allocs, written atomically on every change
//! allocs/<id>/meta.json the alloc's request (Want, Owner, Labels), written atomically
//! allocs/<id>/ended     once a dead alloc's containers are gone (the restore leaves it
//!                       alone); removed when the id is allocated again
//! allocs/<id>/...       the alloc's executor directory
//! ```

pub mod accounting;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Duration;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::digest::Digest;
use crate::docker::ContainerRuntime;
use crate::error::{Classify, Kind};
use crate::executor::{Executor, ExecutorConfig, ExecutorError, ExecutorPorts};
use crate::manifest::{ExecState, MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest};
use crate::persist::{self, PersistError};
use crate::resources::{CPU, DISK, MEM, Resources};
use crate::taskdb::{self, TaskDb};
use crate::time::Time;
use accounting::{AdmitError, AllocView, ENDED_MARK, MetaScan, Offer, RestoreAction, StateScan};

/// Fraction of memory kept back for the agent and the system.
pub const MEM_RESERVE: f64 = 0.05;
/// Disk assumed when the filesystem cannot be measured.
pub const DEFAULT_DISK: f64 = 2e12;
/// Largest `state.json` or `meta.json` read.
pub const MAX_STATE_BYTES: u64 = 4 << 20;
/// How often the pool's TaskDB row is kept alive, and for how long each time.
pub const POOL_ROW_PERIOD: std::time::Duration = std::time::Duration::from_secs(90);
/// The pool row's keepalive horizon.
pub const POOL_ROW_TTL: Duration = Duration::minutes(2);

pub use crate::model::{AllocInspect, AllocMeta};

/// Pool failures.
#[derive(Debug, Error)]
pub enum PoolError {
    /// The machine has less usable memory than the pool was told to expect.
    #[error("unviable pool: available mem ({available}) < expected mem ({expected})")]
    Unviable {
        /// Usable memory, bytes.
        available: f64,
        /// Expected, bytes.
        expected: f64,
    },
    /// No live alloc with this id.
    #[error("alloc {id} does not exist")]
    NoSuchAlloc {
        /// Alloc id.
        id: String,
    },
    /// The alloc expired and was reclaimed or is no longer alive.
    #[error("alloc {id} expired")]
    Expired {
        /// Alloc id.
        id: String,
    },
    /// An alloc id is not 16 lowercase hex characters.
    #[error("invalid alloc id {id:?}")]
    BadId {
        /// The id (truncated).
        id: String,
    },
    /// The request could not be admitted.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// The alloc's executor failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// A state file failed.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// A directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The random source failed.
    #[error("random alloc id: {0}")]
    Random(String),
}

impl Classify for PoolError {
    fn kind(&self) -> Kind {
        match self {
            PoolError::Unviable { .. } => Kind::ResourcesExhausted,
            PoolError::NoSuchAlloc { .. } | PoolError::Expired { .. } => Kind::NotExist,
            PoolError::BadId { .. } => Kind::Invalid,
            PoolError::Admit(e) => e.kind(),
            PoolError::Executor(e) => e.kind(),
            PoolError::Persist(e) => e.kind(),
            PoolError::Io { source, .. } => crate::error::io_kind(source),
            PoolError::Random(_) => Kind::Unavailable,
        }
    }
}

/// CPU feature resource keys from the first processor's `flags` in `/proc/cpuinfo` text (parsed by
/// procfs; none without flags, as on ARM).
pub fn cpu_features(cpuinfo: &str) -> Vec<&'static str> {
    use procfs::FromRead;
    let Some(info) = procfs::CpuInfo::from_read(cpuinfo.as_bytes()).ok() else {
        return Vec::new();
    };
    let Some(flags) = info.flags(0) else {
        return Vec::new();
    };
    let have: std::collections::BTreeSet<&str> = flags.into_iter().collect();
    [
        ("avx", "intel_avx"),
        ("avx2", "intel_avx2"),
        ("avx512f", "intel_avx512"),
    ]
    .into_iter()
    .filter(|(f, _)| have.contains(f))
    .map(|(_, k)| k)
    .collect()
}

/// The pool's resources: 95% of memory, the CPU count, a key per CPU feature (valued at the CPU
/// count) and the disk holding the pool directory.
pub fn machine_resources(
    mem_total: u64,
    cpus: usize,
    features: &[&str],
    disk: Option<u64>,
) -> Resources {
    let cpus = cpus as f64;
    let mut r = Resources::from_pairs([
        (MEM, (mem_total as f64 * (1.0 - MEM_RESERVE)).floor()),
        (CPU, cpus),
        (DISK, disk.map(|d| d as f64).unwrap_or(DEFAULT_DISK)),
    ]);
    for f in features {
        r.set(f, cpus);
    }
    r
}

fn disk_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    s.f_blocks.checked_mul(s.f_frsize)
}

/// A fresh alloc id: 16 hex characters from 8 bytes of the OS's CSPRNG.
///
/// # Errors
/// The OS random source failed.
pub fn new_alloc_id() -> Result<String, PoolError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| PoolError::Random(e.to_string()))?;
    Ok(hex::encode(b))
}

fn valid_alloc_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool id (names the TaskDB pool row), e.g. the instance id.
    pub id: String,
    /// The pool directory.
    pub dir: PathBuf,
    /// Settings every alloc's executor gets (its id and directory are the alloc's).
    pub executor: ExecutorConfig,
    /// Fail to start when usable memory is below this many bytes (0 disables the check).
    pub expected_usable_mem: f64,
}

/// A live alloc.
#[derive(Debug)]
pub struct Alloc {
    id: String,
    executor: Executor,
    meta: AllocMeta,
    created: Time,
    row: Digest,
    /// (last keepalive, expiry)
    times: Mutex<(Time, Time)>,
}

impl Alloc {
    /// Alloc id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The alloc's executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// When it expires unless kept alive.
    pub fn expires(&self) -> Time {
        crate::par::lock(&self.times).1
    }

    /// Reflow's `AllocInspect`.
    pub fn inspect(&self) -> AllocInspect {
        let (last, expires) = *crate::par::lock(&self.times);
        AllocInspect {
            id: self.id.clone(),
            taskdb_alloc_id: self.row,
            resources: self.meta.want.clone(),
            meta: self.meta.clone(),
            created: self.created,
            last_keepalive: last,
            expires,
        }
    }

    /// Its execs with their states, in id order.
    pub fn exec_states(&self) -> Vec<(Digest, ExecState)> {
        self.executor
            .execs()
            .iter()
            .map(|e| (e.id(), e.status().state))
            .collect()
    }

    /// How many of its execs have not completed.
    pub fn running_execs(&self) -> usize {
        self.exec_states()
            .iter()
            .filter(|(_, s)| *s < ExecState::Complete)
            .count()
    }

    /// Its executor's integrity failures so far: how many, and the latest.
    pub fn integrity(&self) -> crate::executor::IntegritySignal {
        self.executor.integrity_signal().borrow().clone()
    }

    /// Where the OOM evidence of exec `exec` came from (`engine`, `cgroup`, `kmsg`, ...), when
    /// it was killed for memory.
    pub fn oom_source(&self, exec: &Digest) -> Option<String> {
        let oom = self.executor.get(exec).ok()?.manifest().oom?;
        Some(format!("{:?}", oom.source).to_lowercase())
    }

    /// Whether exec `exec` is hanging (its container stopped answering).
    pub async fn is_hanging(&self, exec: &Digest) -> bool {
        self.executor.is_hanging(exec).await
    }

    fn view(&self) -> AllocView {
        AllocView {
            id: self.id.clone(),
            resources: self.meta.want.clone(),
            expires: self.expires(),
        }
    }
}

/// A dead alloc's directory, readable until garbage-collected.
#[derive(Debug, Clone)]
pub struct Zombie {
    /// Alloc id.
    pub id: String,
    dir: PathBuf,
}

impl Zombie {
    /// The alloc's request.
    ///
    /// # Errors
    /// An unreadable `meta.json`.
    pub fn meta(&self) -> Result<AllocMeta, PoolError> {
        Ok(persist::read_json(
            &self.dir.join("meta.json"),
            MAX_STATE_BYTES,
        )?)
    }

    /// Its execs (directory names that are exec ids).
    pub fn execs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = fs::read_dir(self.dir.join("execs"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| Digest::parse(&e.file_name().to_string_lossy()).ok())
                    .filter(|d| !d.is_zero())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// An exec's manifest (its result, config and inspect).
    ///
    /// # Errors
    /// An unreadable manifest.
    pub fn manifest(&self, exec: &Digest) -> Result<Manifest, PoolError> {
        Ok(persist::read_json(
            &self.dir.join("execs").join(exec.hex()).join(MANIFEST_FILE),
            MAX_MANIFEST_BYTES,
        )?)
    }

    /// An exec's saved stdout then stderr.
    ///
    /// # Errors
    /// A missing log file.
    pub fn logs(&self, exec: &Digest) -> Result<Vec<u8>, PoolError> {
        let d = self.dir.join("execs").join(exec.hex());
        let mut out = Vec::new();
        for name in ["stdout", "stderr"] {
            let p = d.join(name);
            out.extend(fs::read(&p).map_err(|source| PoolError::Io {
                op: "read",
                path: p,
                source,
            })?);
        }
        Ok(out)
    }
}

fn lock_ending(inner: &PoolInner) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Semaphore>>> {
    crate::par::lock(&inner.ending)
}

#[derive(Debug)]
struct PoolInner {
    cfg: PoolConfig,
    clock: Arc<dyn Clock>,
    /// What each alloc's executor gets.
    executor_ports: ExecutorPorts,
    taskdb: Arc<dyn TaskDb>,
    total: Resources,
    pool_row: Digest,
    allocs: tokio::sync::Mutex<BTreeMap<String, Arc<Alloc>>>,
    /// Allocs taken out of `allocs` whose containers are still being killed, each with a mark
    /// its [`Pool::end`] closes when done. An alloc of the same id (a command's derived id)
    /// is created only after that end: both executors would own the same containers' names and
    /// label, and the old one's kill would take the new one's container.
    ending: Mutex<BTreeMap<String, Arc<Semaphore>>>,
    stopped: AtomicBool,
}

/// The pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    /// Measures the machine, checks the expected memory, and restores allocs from disk (see
    /// [`accounting::plan_restore`]). Restored allocs start expired until a keepalive arrives.
    ///
    /// # Errors
    /// Too little memory, an unusable directory, or a failing executor start.
    pub async fn start(
        cfg: PoolConfig,
        runtime: Arc<dyn ContainerRuntime>,
        clock: Arc<dyn Clock>,
        taskdb: Arc<dyn TaskDb>,
    ) -> Result<Pool, PoolError> {
        Pool::start_with(cfg, ExecutorPorts::new(runtime, clock), taskdb).await
    }

    /// [`Pool::start`] with every port its executors get (registry credentials, OOM
    /// detectors, the blob store, the image ledger).
    ///
    /// # Errors
    /// As [`Pool::start`].
    pub async fn start_with(
        cfg: PoolConfig,
        executor_ports: ExecutorPorts,
        taskdb: Arc<dyn TaskDb>,
    ) -> Result<Pool, PoolError> {
        let clock = executor_ports.clock.clone();
        let allocs_dir = cfg.dir.join("allocs");
        fs::create_dir_all(&allocs_dir).map_err(|source| PoolError::Io {
            op: "create",
            path: allocs_dir.clone(),
            source,
        })?;
        let mem_total = {
            use procfs::Current;
            procfs::Meminfo::current().map_or(0, |m| m.mem_total)
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let total = machine_resources(
            mem_total,
            cpus,
            &cpu_features(&cpuinfo),
            disk_bytes(&cfg.dir),
        );
        if cfg.expected_usable_mem > 0.0 && total.mem() < cfg.expected_usable_mem {
            return Err(PoolError::Unviable {
                available: total.mem(),
                expected: cfg.expected_usable_mem,
            });
        }
        tracing::info!(pool = %cfg.id, resources = %total, "Pool resources.");
        let pool = Pool {
            inner: Arc::new(PoolInner {
                pool_row: taskdb::pool_row(&cfg.id),
                cfg,
                clock,
                executor_ports,
                taskdb,
                total,
                allocs: tokio::sync::Mutex::new(BTreeMap::new()),
                ending: Mutex::new(BTreeMap::new()),
                stopped: AtomicBool::new(false),
            }),
        };
        pool.restore().await?;
        Ok(pool)
    }

    /// The pool's name: its id (e.g. the instance id), which names its TaskDB row.
    pub fn name(&self) -> &str {
        &self.inner.cfg.id
    }

    /// The pool's total resources.
    pub fn resources(&self) -> Resources {
        self.inner.total.clone()
    }

    /// The pool's TaskDB row.
    pub fn taskdb_row(&self) -> Digest {
        self.inner.pool_row
    }

    fn state_path(&self) -> PathBuf {
        self.inner.cfg.dir.join("state.json")
    }

    fn alloc_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.dir.join("allocs").join(id)
    }

    /// The alloc directories (valid alloc ids only), with their paths.
    fn alloc_dirs(&self) -> Result<Vec<(String, PathBuf)>, PoolError> {
        let dir = self.inner.cfg.dir.join("allocs");
        let rd = fs::read_dir(&dir).map_err(|source| PoolError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        Ok(rd
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .filter(|(id, path)| path.is_dir() && valid_alloc_id(id))
            .collect())
    }

    async fn executor_for(&self, id: &str) -> Result<Executor, PoolError> {
        let mut cfg = self.inner.cfg.executor.clone();
        cfg.id = id.to_string();
        cfg.dir = self.alloc_dir(id);
        Ok(Executor::start_with(cfg, self.inner.executor_ports.clone()).await?)
    }

    /// Writes `state.json` for `allocs`, atomically.
    fn save_state(&self, allocs: &BTreeMap<String, Arc<Alloc>>) -> Result<(), PoolError> {
        let state: BTreeMap<&String, &Resources> =
            allocs.iter().map(|(id, a)| (id, &a.meta.want)).collect();
        Ok(persist::write_json_atomic(&self.state_path(), &state)?)
    }

    async fn restore(&self) -> Result<(), PoolError> {
        let state = match persist::read_json::<BTreeMap<String, Resources>>(
            &self.state_path(),
            MAX_STATE_BYTES,
        ) {
            Ok(m) => StateScan::Ok(m),
            Err(e) if e.is_not_found() => StateScan::Missing,
            Err(e) => StateScan::Corrupt(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )),
        };
        let mut dirs = Vec::new();
        // The metas read by the scan, so restoring does not read them again.
        let mut metas: BTreeMap<String, AllocMeta> = BTreeMap::new();
        for (id, path) in self.alloc_dirs()? {
            let scan =
                match persist::read_json::<AllocMeta>(&path.join("meta.json"), MAX_STATE_BYTES) {
                    Ok(meta) => {
                        metas.insert(id.clone(), meta);
                        match path.join(ENDED_MARK).exists() {
                            true => MetaScan::Ended,
                            false => MetaScan::Ok,
                        }
                    }
                    Err(err) if err.is_not_found() => MetaScan::Missing,
                    Err(err) => MetaScan::Corrupt(err.to_string()),
                };
            dirs.push((id, scan));
        }
        let now = self.inner.clock.now();
        let mut allocs = self.inner.allocs.lock().await;
        let mut zombies = 0;
        for action in accounting::plan_restore(&state, &dirs) {
            match action {
                RestoreAction::QuarantineState { reason } => {
                    let to = self
                        .inner
                        .cfg
                        .dir
                        .join(format!("state.json.corrupt-{}", now.timestamp()));
                    tracing::error!(%reason, quarantined = %to.display(), "Corrupt pool state quarantined; restoring every alloc directory instead of killing any.");
                    let _ = fs::rename(self.state_path(), &to);
                }
                RestoreAction::Restore { id } => {
                    // The plan restores only allocs whose meta the scan read.
                    let Some(meta) = metas.remove(&id) else {
                        continue;
                    };
                    let executor = self.executor_for(&id).await?;
                    executor.set_resources(meta.want.clone());
                    let row = taskdb::alloc_row(&self.inner.cfg.id, &id);
                    if let Err(e) = self
                        .inner
                        .taskdb
                        .start_alloc(row, self.inner.pool_row, &id, &meta.want, now)
                        .await
                    {
                        tracing::warn!(alloc = %id, error = %crate::error::chain(&e), "TaskDB start_alloc failed.");
                    }
                    tracing::info!(alloc = %id, execs = executor.execs().len(), "Restored alloc (expired until kept alive).");
                    allocs.insert(
                        id.clone(),
                        Arc::new(Alloc {
                            id,
                            executor,
                            meta,
                            created: now,
                            row,
                            times: Mutex::new((now, now)),
                        }),
                    );
                }
                RestoreAction::EndUnlisted { id } => {
                    tracing::warn!(alloc = %id, "Alloc was freed before the restart; killing its containers.");
                    let executor = self.executor_for(&id).await?;
                    match executor.kill().await {
                        Ok(()) => self.mark_ended(&id, now),
                        Err(e) => {
                            tracing::warn!(alloc = %id, error = %crate::error::chain(&e), "Killing a freed alloc failed.")
                        }
                    }
                    let _ = self
                        .inner
                        .taskdb
                        .set_end_time(taskdb::alloc_row(&self.inner.cfg.id, &id), now)
                        .await;
                }
                RestoreAction::Zombie { .. } => zombies += 1,
                RestoreAction::Skip { id, reason } => {
                    tracing::warn!(alloc = %id, %reason, "Alloc directory skipped.")
                }
                RestoreAction::Orphan { id } => {
                    tracing::warn!(alloc = %id, "Orphaned alloc in state.json (no directory).")
                }
            }
        }
        if zombies > 0 {
            tracing::info!(
                zombies,
                "Allocs that ended before the restart left as zombies."
            );
        }
        self.save_state(&allocs)
    }

    /// The pool's offers now.
    pub async fn offers(&self) -> Vec<Offer> {
        let views: Vec<AllocView> = self
            .inner
            .allocs
            .lock()
            .await
            .values()
            .map(|a| a.view())
            .collect();
        accounting::offers(
            &self.inner.total,
            &views,
            self.inner.clock.now(),
            self.inner.stopped.load(Ordering::SeqCst),
        )
    }

    /// What is free now: the pool's one offer.
    pub async fn available(&self) -> Resources {
        self.offers()
            .await
            .into_iter()
            .next()
            .map(|o| o.available)
            .unwrap_or_default()
    }

    /// Creates an alloc for `meta`, reclaiming expired allocs when room is needed.
    ///
    /// # Errors
    /// No room, a stopped pool, or a failing executor or state write (then nothing is kept).
    pub async fn new_alloc(&self, meta: AllocMeta) -> Result<Arc<Alloc>, PoolError> {
        self.create_alloc(meta, None).await
    }

    /// Like [`Pool::new_alloc`], with the caller's alloc id (16 lowercase hex), idempotently: when
    /// alloc `id` is live it is returned as is. A queue command derives `id` from its command id,
    /// so a redelivered command finds the alloc its first delivery made.
    ///
    /// # Errors
    /// A malformed id, or what [`Pool::new_alloc`] returns.
    pub async fn new_alloc_as(&self, id: &str, meta: AllocMeta) -> Result<Arc<Alloc>, PoolError> {
        if !valid_alloc_id(id) {
            return Err(PoolError::BadId {
                id: id.chars().take(40).collect(),
            });
        }
        self.create_alloc(meta, Some(id.to_string())).await
    }

    async fn create_alloc(
        &self,
        meta: AllocMeta,
        id: Option<String>,
    ) -> Result<Arc<Alloc>, PoolError> {
        meta.want
            .validate()
            .map_err(|e| PoolError::Executor(ExecutorError::Config(e.into())))?;
        let mut allocs = loop {
            let allocs = self.inner.allocs.lock().await;
            let Some(id) = id.as_ref() else { break allocs };
            if let Some(a) = allocs.get(id) {
                // Asked for again (a redelivered or resumed command): it is wanted now, so an
                // expired one (a restored alloc) is revived before a new alloc's admission
                // could reclaim it.
                let floor = self.inner.clock.now() + accounting::INITIAL_KEEPALIVE;
                if a.expires() < floor {
                    self.extend(a, accounting::INITIAL_KEEPALIVE);
                }
                return Ok(a.clone());
            }
            let ending = lock_ending(&self.inner).get(id).cloned();
            let Some(ending) = ending else { break allocs };
            drop(allocs);
            tracing::info!(alloc = %id, "Waiting for the earlier alloc of this id to end.");
            let _ = ending.acquire().await;
        };
        let now = self.inner.clock.now();
        let views: Vec<AllocView> = allocs.values().map(|a| a.view()).collect();
        let reclaim = accounting::admit(
            &self.inner.total,
            &views,
            &meta.want,
            now,
            self.inner.stopped.load(Ordering::SeqCst),
        )?;
        let id = match id {
            Some(id) => id,
            None => new_alloc_id()?,
        };
        let dir = self.alloc_dir(&id);
        fs::create_dir_all(&dir).map_err(|source| PoolError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        // An id allocated again (a job's alloc) is live from here: the meta's atomic write
        // syncs the directory, so the mark's removal is durable before the alloc is listed.
        let mark = dir.join(ENDED_MARK);
        match fs::remove_file(&mark) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PoolError::Io {
                    op: "remove",
                    path: mark,
                    source,
                });
            }
        }
        persist::write_json_atomic(&dir.join("meta.json"), &meta)?;
        let executor = self.executor_for(&id).await?;
        executor.set_resources(meta.want.clone());
        let row = taskdb::alloc_row(&self.inner.cfg.id, &id);
        let expires = now + accounting::INITIAL_KEEPALIVE;
        let alloc = Arc::new(Alloc {
            id: id.clone(),
            executor,
            meta,
            created: now,
            row,
            times: Mutex::new((now, expires)),
        });
        let mut reclaimed = Vec::new();
        for r in &reclaim {
            if let Some(a) = allocs.remove(r) {
                reclaimed.push((self.mark_ending(&a.id), a));
            }
        }
        allocs.insert(id.clone(), alloc.clone());
        if let Err(e) = self.save_state(&allocs) {
            allocs.remove(&id);
            let _ = alloc.executor.kill().await;
            for (ending, a) in reclaimed {
                self.unmark_ending(&a.id, ending);
                allocs.insert(a.id.clone(), a);
            }
            return Err(e);
        }
        drop(allocs);
        for (ending, a) in reclaimed {
            tracing::info!(alloc = %a.id, "Reclaiming an expired alloc.");
            self.end(&a, ending).await;
        }
        if let Err(e) = self
            .inner
            .taskdb
            .start_alloc(row, self.inner.pool_row, &id, &alloc.meta.want, now)
            .await
        {
            tracing::warn!(alloc = %id, error = %crate::error::chain(&e), "TaskDB start_alloc failed.");
        }
        tracing::info!(alloc = %id, want = %alloc.meta.want, owner = %alloc.meta.owner, "New alloc.");
        Ok(alloc)
    }

    /// Marks alloc `id`, just taken out of the live allocs (under their lock), as ending: an
    /// alloc of the same id waits until [`Pool::end`] closes the returned mark.
    fn mark_ending(&self, id: &str) -> Arc<Semaphore> {
        let mark = Arc::new(Semaphore::new(0));
        lock_ending(&self.inner).insert(id.to_string(), mark.clone());
        mark
    }

    /// Ends the ending mark of alloc `id`, waking whoever waits to create it again.
    fn unmark_ending(&self, id: &str, mark: Arc<Semaphore>) {
        let mut ending = lock_ending(&self.inner);
        if ending.get(id).is_some_and(|m| Arc::ptr_eq(m, &mark)) {
            ending.remove(id);
        }
        // Waiters wait for a permit that never comes; closing wakes them.
        mark.close();
    }

    /// Kills an alloc's executor and records its end; the directory stays (a zombie). `ending`
    /// is its ending mark, given back once its containers are gone and its [`ENDED_MARK`]
    /// written: an alloc made again under its id waits for both, so the mark never lands in a
    /// live alloc's directory.
    async fn end(&self, a: &Alloc, ending: Arc<Semaphore>) {
        let killed = a.executor.kill().await;
        // The end is once the kill is over, as the TaskDB recorded it before the mark existed.
        let now = self.inner.clock.now();
        match killed {
            Ok(()) => self.mark_ended(&a.id, now),
            Err(e) => {
                tracing::warn!(alloc = %a.id, error = %crate::error::chain(&e), "Killing an alloc's executor failed.")
            }
        }
        self.unmark_ending(&a.id, ending);
        if let Err(e) = self.inner.taskdb.set_end_time(a.row, now).await {
            tracing::warn!(alloc = %a.id, error = %crate::error::chain(&e), "TaskDB end time failed.");
        }
    }

    /// Writes alloc `id`'s [`ENDED_MARK`], with the time, once its containers are gone: the next
    /// start then leaves its directory alone instead of making an executor to end it again. Not
    /// synced, and a failure is only logged: a mark lost in a crash costs that repeated end, as
    /// before marks existed. (The TaskDB end time, written after it, is best effort as ever.)
    fn mark_ended(&self, id: &str, now: Time) {
        let path = self.alloc_dir(id).join(ENDED_MARK);
        if let Err(e) = fs::write(&path, crate::time::format(&now)) {
            tracing::warn!(alloc = %id, error = %crate::error::chain(&e), "Marking an alloc ended failed.");
        }
    }

    /// Extends alloc `id` by `interval` (at most [`accounting::MAX_KEEPALIVE`]); returns what was
    /// granted. An expired alloc that was not reclaimed yet is revived.
    ///
    /// # Errors
    /// [`PoolError::Expired`] when the alloc is gone.
    pub async fn keepalive(&self, id: &str, interval: Duration) -> Result<Duration, PoolError> {
        let a = self
            .inner
            .allocs
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| PoolError::Expired { id: id.to_string() })?;
        let granted = accounting::grant_keepalive(interval);
        self.extend(&a, granted);
        Ok(granted)
    }

    /// Keeps alloc `a` alive for `granted` from now, and tells the TaskDB in the background.
    fn extend(&self, a: &Alloc, granted: Duration) {
        let now = self.inner.clock.now();
        let expires = now + granted;
        *crate::par::lock(&a.times) = (now, expires);
        let (db, row) = (self.inner.taskdb.clone(), a.row);
        tokio::spawn(async move {
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                db.keepalive(row, expires),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::error::chain(&e), "TaskDB alloc keepalive failed.")
                }
                Err(_) => tracing::warn!("TaskDB alloc keepalive timed out."),
            }
        });
    }

    /// Frees alloc `id`: it is forgotten, `state.json` is rewritten, its containers are killed and
    /// its end recorded. Its directory stays, readable as a zombie.
    ///
    /// # Errors
    /// No such alloc, or a failing state write.
    pub async fn free(&self, id: &str) -> Result<(), PoolError> {
        let mut allocs = self.inner.allocs.lock().await;
        let a = allocs
            .remove(id)
            .ok_or_else(|| PoolError::NoSuchAlloc { id: id.to_string() })?;
        let ending = self.mark_ending(id);
        if let Err(e) = self.save_state(&allocs) {
            self.unmark_ending(id, ending);
            allocs.insert(id.to_string(), a);
            return Err(e);
        }
        drop(allocs);
        self.end(&a, ending).await;
        tracing::info!(alloc = %id, "Freed alloc.");
        Ok(())
    }

    /// The live alloc `id`.
    ///
    /// # Errors
    /// [`PoolError::NoSuchAlloc`].
    pub async fn alloc(&self, id: &str) -> Result<Arc<Alloc>, PoolError> {
        self.inner
            .allocs
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| PoolError::NoSuchAlloc { id: id.to_string() })
    }

    /// A dead alloc's directory, read-only.
    ///
    /// # Errors
    /// A bad id, or no such directory.
    pub fn zombie(&self, id: &str) -> Result<Zombie, PoolError> {
        if !valid_alloc_id(id) {
            return Err(PoolError::BadId {
                id: id.chars().take(40).collect(),
            });
        }
        let dir = self.alloc_dir(id);
        if !dir.is_dir() {
            return Err(PoolError::NoSuchAlloc { id: id.to_string() });
        }
        Ok(Zombie {
            id: id.to_string(),
            dir,
        })
    }

    /// Removes zombie directories (dead allocs) whose last change is older than `max_age`;
    /// returns how many were removed. Live allocs are never touched.
    ///
    /// # Errors
    /// Listing the allocs directory.
    pub async fn collect_zombies(&self, max_age: Duration) -> Result<usize, PoolError> {
        let live: std::collections::BTreeSet<String> =
            self.inner.allocs.lock().await.keys().cloned().collect();
        let now = self.inner.clock.now();
        let mut removed = 0;
        for (id, path) in self.alloc_dirs()? {
            if live.contains(&id) {
                continue;
            }
            let changed = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .map(chrono::DateTime::<chrono::Utc>::from);
            if changed.is_some_and(|t| now - t > max_age) {
                match fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(alloc = %id, "Garbage-collected a zombie alloc.");
                        removed += 1;
                    }
                    Err(err) => {
                        tracing::warn!(alloc = %id, error = %crate::error::chain(&err), "Removing a zombie alloc failed.")
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Collects zombies older than `max_age` at start and then every quarter of `max_age`
    /// (between 1 s and 10 minutes) until `cancel`.
    ///
    /// # Cancel safety
    /// Cancel safe: a sweep interrupted between allocs leaves the rest for the next one.
    pub async fn collect_zombies_until(
        &self,
        max_age: std::time::Duration,
        cancel: CancellationToken,
    ) {
        use std::time::Duration as Std;
        let every = (max_age / 4).clamp(Std::from_secs(1), Std::from_secs(600));
        let age = Duration::from_std(max_age).unwrap_or(Duration::MAX);
        loop {
            match self.collect_zombies(age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "Zombie allocs collected."),
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "Collecting zombie allocs failed.")
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The live allocs, by id.
    pub async fn allocs(&self) -> Vec<Arc<Alloc>> {
        self.inner.allocs.lock().await.values().cloned().collect()
    }

    /// Whether every alloc has been expired for at least `d` (scale-in); if so the pool stops
    /// taking allocs. Otherwise how long until it could be idle.
    pub async fn stop_if_idle_for(&self, d: Duration) -> (bool, Duration) {
        let allocs = self.inner.allocs.lock().await;
        let views: Vec<AllocView> = allocs.values().map(|a| a.view()).collect();
        let (idle, wait) = accounting::idle_for(&views, self.inner.clock.now(), d);
        if idle {
            self.inner.stopped.store(true, Ordering::SeqCst);
        }
        (idle, wait)
    }

    /// Stops every alloc's state machines without killing containers (agent shutdown); the next
    /// start restores them.
    pub async fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for a in self.allocs().await {
            a.executor.shutdown().await;
        }
    }

    /// Marks the pool's TaskDB row `State = draining` (with `StateTime`), so an autoscaler or a
    /// scheduler reading the table sees the drain; retried within 10 s, never an error.
    pub async fn mark_draining(&self) {
        let (db, row) = (self.inner.taskdb.clone(), self.inner.pool_row);
        let at = self.inner.clock.now();
        retry_for_10s("pool row state", || db.set_state(row, "draining", at)).await;
    }

    /// Keeps the pool's TaskDB row current until `cancel`: records the pool's resources and start,
    /// renews its keepalive every [`POOL_ROW_PERIOD`] (failures are retried with backoff and never
    /// end the loop), and sets its end time on cancel (within 10 s).
    pub async fn maintain_taskdb_row(&self, cancel: CancellationToken) {
        let (db, row) = (self.inner.taskdb.clone(), self.inner.pool_row);
        let now = self.inner.clock.now();
        retry("start pool row", &cancel, || {
            db.start_pool(row, &self.inner.cfg.id, &self.inner.total, now)
        })
        .await;
        loop {
            let until = self.inner.clock.now() + POOL_ROW_TTL;
            retry("pool row keepalive", &cancel, || db.keepalive(row, until)).await;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(POOL_ROW_PERIOD) => {}
            }
        }
        let end = self.inner.clock.now();
        retry_for_10s("pool row end time", || db.set_end_time(row, end)).await;
    }
}

/// [`retry`] within a 10 s budget (a shutdown's last words to the TaskDB).
async fn retry_for_10s<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::taskdb::TaskDbError>>,
{
    let budget = CancellationToken::new();
    let guard = budget.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        guard.cancel();
    });
    retry(what, &budget, f).await;
    timer.abort();
}

/// Retries `f` with backoff (10 s, x1.2, at most 2 min, 5 tries) until it succeeds, the tries run
/// out, or `cancel` fires. Failures are logged, never returned.
async fn retry<F, Fut>(what: &str, cancel: &CancellationToken, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::taskdb::TaskDbError>>,
{
    let mut delay = crate::backoff::Backoff::new(
        std::time::Duration::from_secs(10),
        1.2,
        std::time::Duration::from_secs(120),
    );
    for attempt in 1..=5 {
        match f().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(what, attempt, error = %crate::error::chain(&e), "TaskDB update failed; retrying.")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_parsers() {
        let x86 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(
            cpu_features(x86),
            vec!["intel_avx", "intel_avx2", "intel_avx512"]
        );
        // ARM has no flags line (Reflow's pool failed to start on it).
        assert!(cpu_features("processor\t: 0\nFeatures\t: fp asimd\n").is_empty());
        let r = machine_resources(100 << 30, 8, &["intel_avx"], Some(1 << 40));
        assert_eq!(r.mem(), ((100u64 << 30) as f64 * 0.95).floor());
        assert_eq!(
            (r.get(CPU), r.get("intel_avx"), r.get(DISK)),
            (8.0, 8.0, (1u64 << 40) as f64)
        );
        assert_eq!(machine_resources(1, 1, &[], None).get(DISK), DEFAULT_DISK);
    }

    #[test]
    fn alloc_ids_are_random_hex() {
        let a = new_alloc_id().unwrap();
        let b = new_alloc_id().unwrap();
        assert!(valid_alloc_id(&a) && valid_alloc_id(&b));
        assert_ne!(a, b);
        assert!(!valid_alloc_id("../../etc") && !valid_alloc_id("ABCDEF0123456789"));
    }
}
