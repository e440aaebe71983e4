//! The recovery planner: a pure function from what is on disk (exec directories and their
//! manifests) and what Docker has (containers labelled with this executor) to the actions that
//! bring the executor back. The executor applies the plan; this module does no I/O, so every
//! combination is tested as a table.
//!
//! Rules:
//! - A manifest in `Init` resumes at create; with its container, like `Created` (create had
//!   prepared its directories, and the container may have written to them since).
//! - `Created` resumes at start; if its container is gone, at create. (The executor keeps
//!   `Created` in memory only, so an exec is durably `Init` until it is `Running`; an
//!   earlier agent's manifests may still say `Created`.)
//! - `Running` resumes at wait (re-attaching even if the container exited while no agent ran);
//!   if its container is gone, the exec is marked lost (retryable), never silently dropped.
//! - `Complete` is served from the manifest; a leftover container is removed.
//! - A torn or unreadable manifest is quarantined and its container, if any, is left alone.
//! - An exec directory without a manifest never reached Init durably (its put was never
//!   acknowledged), so the directory is removed.
//! - A container with this executor's label and no exec directory is an orphan and removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::Digest;
use crate::manifest::ExecState;

/// What the scan found for one entry of `execs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirScan {
    /// A readable manifest in this state.
    Manifest(ExecState),
    /// A readable manifest of an intern/extern exec (no container) in this state.
    BlobManifest(ExecState),
    /// No `manifest.json`.
    NoManifest,
    /// A manifest that cannot be used (torn, undecodable, too large, newer version).
    Corrupt(String),
}

/// One exec directory as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedExec {
    /// The directory name.
    pub name: String,
    /// The exec id, when the name parses as a digest.
    pub id: Option<Digest>,
    /// What was found in it.
    pub scan: DirScan,
}

/// A container that carries this executor's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledContainer {
    /// Container name (without the leading `/`).
    pub name: String,
    /// The exec id from its label, if it parses.
    pub exec: Option<Digest>,
}

/// One recovery step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecoveryAction {
    /// Register the exec and run its state machine from `from`.
    Resume {
        /// The exec.
        id: Digest,
        /// The state to resume from.
        from: ExecState,
    },
    /// Register the completed exec; its result comes from the manifest.
    Serve {
        /// The exec.
        id: Digest,
    },
    /// Register the exec as failed: its container vanished while it was running.
    MarkLost {
        /// The exec.
        id: Digest,
    },
    /// Move the unusable manifest aside and report it; the exec is not registered and any
    /// container is left running for an operator (or a re-put, which finds it by name).
    Quarantine {
        /// Directory name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Remove an exec directory that never durably reached Init.
    RemoveDir {
        /// Directory name.
        name: String,
    },
    /// Leave a directory whose name is not an exec id alone, and report it.
    Ignore {
        /// Directory name.
        name: String,
    },
    /// Remove a container.
    RemoveContainer {
        /// Container name.
        name: String,
    },
}

/// Plans recovery; see the module docs. The plan is sorted, so equal inputs give equal plans.
pub fn plan(execs: &[ScannedExec], containers: &[LabeledContainer]) -> Vec<RecoveryAction> {
    use RecoveryAction::*;
    let mut by_exec: BTreeMap<Digest, Vec<&LabeledContainer>> = BTreeMap::new();
    let mut actions = Vec::new();
    for c in containers {
        match c.exec {
            Some(id) => by_exec.entry(id).or_default().push(c),
            None => actions.push(RemoveContainer {
                name: c.name.clone(),
            }),
        }
    }
    let mut claimed: BTreeSet<Digest> = BTreeSet::new();
    for e in execs {
        let Some(id) = e.id else {
            actions.push(Ignore {
                name: e.name.clone(),
            });
            continue;
        };
        let has_container = by_exec.contains_key(&id);
        match &e.scan {
            DirScan::Manifest(state) => {
                claimed.insert(id);
                actions.push(match state {
                    // Its container exists, so create had prepared its directories and
                    // succeeded: resumed like `Created`, without preparing them again over
                    // what the container may already have written.
                    ExecState::Unstarted | ExecState::Init | ExecState::Created
                        if has_container =>
                    {
                        Resume {
                            id,
                            from: ExecState::Created,
                        }
                    }
                    ExecState::Unstarted | ExecState::Init => Resume {
                        id,
                        from: ExecState::Init,
                    },
                    ExecState::Created => Resume {
                        id,
                        from: ExecState::Init,
                    },
                    ExecState::Running if has_container => Resume {
                        id,
                        from: ExecState::Running,
                    },
                    ExecState::Running => MarkLost { id },
                    ExecState::Complete => {
                        claimed.remove(&id); // its leftover container goes
                        Serve { id }
                    }
                });
            }
            DirScan::BlobManifest(state) => {
                // No container to find: an unfinished transfer is redone from its step.
                actions.push(match state {
                    ExecState::Complete => Serve { id },
                    ExecState::Unstarted | ExecState::Init => Resume {
                        id,
                        from: ExecState::Init,
                    },
                    s => Resume { id, from: *s },
                });
            }
            DirScan::Corrupt(reason) => {
                claimed.insert(id);
                actions.push(Quarantine {
                    name: e.name.clone(),
                    reason: reason.clone(),
                });
            }
            DirScan::NoManifest => actions.push(RemoveDir {
                name: e.name.clone(),
            }),
        }
    }
    for (id, cs) in &by_exec {
        if !claimed.contains(id) {
            actions.extend(cs.iter().map(|c| RemoveContainer {
                name: c.name.clone(),
            }));
        }
    }
    actions.sort();
    actions
}

#[cfg(test)]
mod tests {
    use super::RecoveryAction::*;
    use super::*;

    fn id(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn exec(n: u8, scan: DirScan) -> ScannedExec {
        ScannedExec {
            name: id(n).hex(),
            id: Some(id(n)),
            scan,
        }
    }

    fn ctr(n: u8) -> LabeledContainer {
        LabeledContainer {
            name: format!("reflow-x-{}", id(n).short()),
            exec: Some(id(n)),
        }
    }

    #[test]
    fn table() {
        use DirScan::*;
        use ExecState::*;
        type Case = (
            &'static str,
            Vec<ScannedExec>,
            Vec<LabeledContainer>,
            Vec<RecoveryAction>,
        );
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![], vec![]),
            (
                "blob exec running: the transfer is redone, nothing is lost",
                vec![exec(1, BlobManifest(Running))],
                vec![],
                vec![Resume {
                    id: id(1),
                    from: Running,
                }],
            ),
            (
                "blob exec complete",
                vec![exec(1, BlobManifest(Complete))],
                vec![],
                vec![Serve { id: id(1) }],
            ),
            (
                "init, no container",
                vec![exec(1, Manifest(Init))],
                vec![],
                vec![Resume {
                    id: id(1),
                    from: Init,
                }],
            ),
            (
                "init, container exists (crash after create, or after start)",
                vec![exec(1, Manifest(Init))],
                vec![ctr(1)],
                vec![Resume {
                    id: id(1),
                    from: Created,
                }],
            ),
            (
                "unstarted treated as init",
                vec![exec(1, Manifest(Unstarted))],
                vec![],
                vec![Resume {
                    id: id(1),
                    from: Init,
                }],
            ),
            (
                "created with container",
                vec![exec(1, Manifest(Created))],
                vec![ctr(1)],
                vec![Resume {
                    id: id(1),
                    from: Created,
                }],
            ),
            (
                "created, container gone: re-create",
                vec![exec(1, Manifest(Created))],
                vec![],
                vec![Resume {
                    id: id(1),
                    from: Init,
                }],
            ),
            (
                "running with container (maybe exited meanwhile)",
                vec![exec(1, Manifest(Running))],
                vec![ctr(1)],
                vec![Resume {
                    id: id(1),
                    from: Running,
                }],
            ),
            (
                "running, container gone: lost",
                vec![exec(1, Manifest(Running))],
                vec![],
                vec![MarkLost { id: id(1) }],
            ),
            (
                "complete",
                vec![exec(1, Manifest(Complete))],
                vec![],
                vec![Serve { id: id(1) }],
            ),
            (
                "complete with leftover container",
                vec![exec(1, Manifest(Complete))],
                vec![ctr(1)],
                vec![Serve { id: id(1) }, RemoveContainer { name: ctr(1).name }],
            ),
            (
                "corrupt manifest keeps its container",
                vec![exec(1, Corrupt("torn".into()))],
                vec![ctr(1)],
                vec![Quarantine {
                    name: id(1).hex(),
                    reason: "torn".into(),
                }],
            ),
            (
                "dir without manifest",
                vec![exec(1, NoManifest)],
                vec![],
                vec![RemoveDir { name: id(1).hex() }],
            ),
            (
                "dir without manifest and a stray container",
                vec![exec(1, NoManifest)],
                vec![ctr(1)],
                vec![
                    RemoveDir { name: id(1).hex() },
                    RemoveContainer { name: ctr(1).name },
                ],
            ),
            (
                "orphan container",
                vec![],
                vec![ctr(2)],
                vec![RemoveContainer { name: ctr(2).name }],
            ),
            (
                "container with unparsable label",
                vec![],
                vec![LabeledContainer {
                    name: "reflow-x-bad".into(),
                    exec: None,
                }],
                vec![RemoveContainer {
                    name: "reflow-x-bad".into(),
                }],
            ),
            (
                "foreign directory name",
                vec![ScannedExec {
                    name: "lost+found".into(),
                    id: None,
                    scan: NoManifest,
                }],
                vec![],
                vec![Ignore {
                    name: "lost+found".into(),
                }],
            ),
        ];
        for (what, execs, containers, mut want) in cases {
            want.sort();
            assert_eq!(plan(&execs, &containers), want, "{what}");
        }
    }

    #[test]
    fn mixed_directory_is_planned_whole() {
        use DirScan::*;
        use ExecState::*;
        let execs = vec![
            exec(1, Manifest(Running)),
            exec(2, Manifest(Complete)),
            exec(3, Corrupt("decode".into())),
            exec(4, NoManifest),
        ];
        let containers = vec![ctr(1), ctr(3), ctr(5)];
        let got = plan(&execs, &containers);
        assert_eq!(got.len(), 5);
        assert!(got.contains(&Resume {
            id: id(1),
            from: Running
        }));
        assert!(got.contains(&Serve { id: id(2) }));
        assert!(got.contains(&Quarantine {
            name: id(3).hex(),
            reason: "decode".into()
        }));
        assert!(got.contains(&RemoveDir { name: id(4).hex() }));
        assert!(got.contains(&RemoveContainer { name: ctr(5).name }));
        assert!(
            !got.contains(&RemoveContainer { name: ctr(3).name }),
            "a quarantined exec keeps its container"
        );
    }
}
