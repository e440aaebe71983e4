//! The container an exec runs in, as a pure function of the executor's configuration, where the
//! exec lives, its `ExecConfig` and its arguments: mounts, environment, the command line under
//! `bash -e -l -o pipefail -c`, labels, network, user, OOM score and memory limits
//! (docs/executor.md, "The container"). Refusals (the Docker socket, AWS credentials) are
//! decided here, before anything is created.

use std::path::Path;

use super::{ExecutorConfig, LABEL_EXEC, LABEL_EXECUTOR, cmdfmt};
use crate::digest::Digest;
use crate::docker::{AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, Bind, ContainerSpec};
use crate::error::{Kind, ReflowError};
use crate::model::ExecConfig;

/// Swap allowed over the memory limit with `HardMemLimit`.
pub const HARD_LIMIT_SWAP_HEADROOM: i64 = 100 << 20;
/// OOM score adjustment of exec containers: they die before the agent.
pub const CONTAINER_OOM_SCORE_ADJ: i64 = 1000;

/// Where an exec lives: its id, its container's name, and its directory as the engine's host
/// sees it.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The exec id (a label on the container).
    pub exec: &'a Digest,
    /// The container's name.
    pub container: &'a str,
    /// The exec's directory on the engine's host (`arg/`, `tmp/`, `return/` are mounted).
    pub host_dir: &'a Path,
}

fn refuse(kind: Kind, at: &Placement<'_>, msg: &str) -> ReflowError {
    ReflowError::new(kind, "create", msg).with_arg(at.exec)
}

/// The container for `cfg` with its formatted `args`, under the executor's `policy`.
///
/// # Errors
/// `NotAllowed` when the exec asks for the Docker socket or AWS credentials the executor does
/// not grant; `Temporary` when it may have AWS credentials but none are available.
pub fn container_spec(
    policy: &ExecutorConfig,
    at: &Placement<'_>,
    cfg: &ExecConfig,
    args: &[String],
) -> Result<ContainerSpec, ReflowError> {
    let h = |sub: &str| at.host_dir.join(sub).to_string_lossy().into_owned();
    let mut binds = vec![
        Bind {
            host: h("arg"),
            container: "/arg".into(),
        },
        Bind {
            host: h("tmp"),
            container: "/tmp".into(),
        },
        Bind {
            host: h("return"),
            container: "/return".into(),
        },
    ];
    let mut env = vec![
        "tmp=/tmp".to_string(),
        "TMPDIR=/tmp".to_string(),
        "HOME=/tmp".to_string(),
    ];
    if cfg.output_is_dir.is_empty() {
        env.push("out=/return/default".to_string());
    }
    if cfg.need_docker_access {
        if !policy.allow_docker_socket {
            return Err(refuse(
                Kind::NotAllowed,
                at,
                "the exec asks for Docker access, which this agent does not allow",
            ));
        }
        binds.push(Bind {
            host: "/var/run/docker.sock".into(),
            container: "/var/run/docker.sock".into(),
        });
    }
    if cfg.need_aws_creds {
        match (&policy.aws_credentials, policy.allow_aws_creds) {
            (Some(c), true) => {
                env.push(format!("AWS_ACCESS_KEY_ID={}", c.access_key_id));
                // Named by the constants the inspect's redaction goes by.
                env.push(format!("{AWS_SECRET_ACCESS_KEY}={}", c.secret_access_key));
                if let Some(t) = &c.session_token {
                    env.push(format!("{AWS_SESSION_TOKEN}={t}"));
                }
            }
            (_, false) => {
                return Err(refuse(
                    Kind::NotAllowed,
                    at,
                    "the exec asks for AWS credentials, which this agent does not pass on",
                ));
            }
            (None, true) => {
                return Err(refuse(Kind::Temporary, at, "no AWS credentials available"));
            }
        }
    }
    let mem = cfg.resources.mem();
    let (memory, memory_swap) = if policy.hard_mem_limit && mem > 0.0 {
        // `mem` is validated finite and non-negative; float-to-int casts saturate.
        #[allow(clippy::cast_possible_truncation)]
        let m = mem as i64;
        (Some(m), Some(m.saturating_add(HARD_LIMIT_SWAP_HEADROOM)))
    } else {
        (None, None)
    };
    Ok(ContainerSpec {
        name: at.container.to_string(),
        image: cfg.image.clone(),
        entrypoint: vec![
            "/bin/bash".into(),
            "-e".into(),
            "-l".into(),
            "-o".into(),
            "pipefail".into(),
            "-c".into(),
            cmdfmt::format(&cfg.cmd, args),
        ],
        env,
        labels: [
            (LABEL_EXEC.to_string(), at.exec.hex()),
            (LABEL_EXECUTOR.to_string(), policy.id.clone()),
        ]
        .into_iter()
        .collect(),
        binds,
        network_mode: policy.network_mode.clone(),
        user: policy.user.clone(),
        oom_score_adj: CONTAINER_OOM_SCORE_ADJ,
        memory,
        memory_swap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::AwsCredentials;
    use crate::resources::Resources;

    /// What a case changes from the plain policy and exec.
    struct Case {
        name: &'static str,
        policy: fn(&mut ExecutorConfig),
        exec: fn(&mut ExecConfig),
        want: Result<fn(&ContainerSpec), Kind>,
    }

    fn env_has(s: &ContainerSpec, var: &str) -> bool {
        s.env.iter().any(|e| e.split('=').next() == Some(var))
    }

    #[test]
    fn the_container_follows_the_policy_and_the_exec() {
        let id = Digest::of(b"exec");
        let at = Placement {
            exec: &id,
            container: "reflow-exec-1",
            host_dir: Path::new("/host/exec"),
        };
        let cases = [
            Case {
                name: "plain",
                policy: |_| {},
                exec: |_| {},
                want: Ok(|s| {
                    let binds: Vec<(&str, &str)> = s
                        .binds
                        .iter()
                        .map(|b| (b.host.as_str(), b.container.as_str()))
                        .collect();
                    assert_eq!(
                        binds,
                        [
                            ("/host/exec/arg", "/arg"),
                            ("/host/exec/tmp", "/tmp"),
                            ("/host/exec/return", "/return")
                        ]
                    );
                    assert_eq!(
                        s.env,
                        [
                            "tmp=/tmp",
                            "TMPDIR=/tmp",
                            "HOME=/tmp",
                            "out=/return/default"
                        ]
                    );
                    assert_eq!(
                        s.entrypoint,
                        [
                            "/bin/bash",
                            "-e",
                            "-l",
                            "-o",
                            "pipefail",
                            "-c",
                            "cat /arg/0/0 > $out"
                        ]
                    );
                    assert_eq!(s.name, "reflow-exec-1");
                    assert_eq!(s.image, "img:1");
                    assert_eq!(s.labels[LABEL_EXEC], Digest::of(b"exec").hex());
                    assert_eq!(s.labels[LABEL_EXECUTOR], "ex-1");
                    assert_eq!(s.network_mode, "none");
                    assert_eq!(s.oom_score_adj, CONTAINER_OOM_SCORE_ADJ);
                    assert_eq!((s.memory, s.memory_swap), (None, None));
                }),
            },
            Case {
                name: "output directories: no $out",
                policy: |_| {},
                exec: |c| c.output_is_dir = vec![true, false],
                want: Ok(|s| assert!(!env_has(s, "out"))),
            },
            Case {
                name: "docker socket refused",
                policy: |_| {},
                exec: |c| c.need_docker_access = true,
                want: Err(Kind::NotAllowed),
            },
            Case {
                name: "docker socket granted",
                policy: |p| p.allow_docker_socket = true,
                exec: |c| c.need_docker_access = true,
                want: Ok(|s| {
                    assert!(
                        s.binds
                            .iter()
                            .any(|b| b.container == "/var/run/docker.sock")
                    );
                }),
            },
            Case {
                name: "aws credentials refused",
                policy: |_| {},
                exec: |c| c.need_aws_creds = true,
                want: Err(Kind::NotAllowed),
            },
            Case {
                name: "aws credentials allowed, none to give",
                policy: |p| p.allow_aws_creds = true,
                exec: |c| c.need_aws_creds = true,
                want: Err(Kind::Temporary),
            },
            Case {
                name: "aws credentials passed on",
                policy: |p| {
                    p.allow_aws_creds = true;
                    p.aws_credentials = Some(AwsCredentials {
                        access_key_id: "AKID".into(),
                        secret_access_key: "SECRET".into(),
                        session_token: Some("TOKEN".into()),
                    });
                },
                exec: |c| c.need_aws_creds = true,
                want: Ok(|s| {
                    for v in [
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_SESSION_TOKEN",
                    ] {
                        assert!(env_has(s, v), "{v}");
                    }
                }),
            },
            Case {
                name: "credentials held but not asked for",
                policy: |p| {
                    p.allow_aws_creds = true;
                    p.aws_credentials = Some(AwsCredentials {
                        access_key_id: "AKID".into(),
                        secret_access_key: "SECRET".into(),
                        session_token: None,
                    });
                },
                exec: |_| {},
                want: Ok(|s| assert!(!env_has(s, "AWS_ACCESS_KEY_ID"))),
            },
            Case {
                name: "hard memory limit",
                policy: |p| p.hard_mem_limit = true,
                exec: |_| {},
                want: Ok(|s| {
                    assert_eq!(s.memory, Some(64 << 20));
                    assert_eq!(s.memory_swap, Some((64 << 20) + HARD_LIMIT_SWAP_HEADROOM));
                }),
            },
            Case {
                name: "hard memory limit, no memory asked",
                policy: |p| p.hard_mem_limit = true,
                exec: |c| c.resources = Resources::from_pairs([("cpu", 1.0)]),
                want: Ok(|s| assert_eq!((s.memory, s.memory_swap), (None, None))),
            },
            Case {
                name: "host network and a user",
                policy: |p| {
                    p.network_mode = "host".into();
                    p.user = Some("1000:1000".into());
                },
                exec: |_| {},
                want: Ok(|s| {
                    assert_eq!(s.network_mode, "host");
                    assert_eq!(s.user.as_deref(), Some("1000:1000"));
                }),
            },
        ];
        for case in cases {
            let mut policy = ExecutorConfig::new("ex-1", "/state/allocs");
            policy.network_mode = "none".into();
            (case.policy)(&mut policy);
            let mut exec = ExecConfig {
                image: "img:1".into(),
                cmd: "cat %s > $out".into(),
                resources: Resources::from_pairs([("mem", f64::from(64u32 << 20)), ("cpu", 1.0)]),
                ..ExecConfig::default()
            };
            (case.exec)(&mut exec);
            let got = container_spec(&policy, &at, &exec, &["/arg/0/0".to_string()]);
            match (got, case.want) {
                (Ok(spec), Ok(check)) => {
                    eprintln!("case: {}", case.name);
                    check(&spec);
                }
                (Err(e), Err(kind)) => assert_eq!(e.kind, kind, "{}: {e}", case.name),
                (got, _) => panic!("{}: {got:?}", case.name),
            }
        }
    }
}
