//! Exec latency and throughput, for bench/exec.sh. Prints one JSON object.
//!
//! ```text
//! exec_bench floor    N CONCURRENCY IMAGE   bare create/start/wait/remove on the Docker API
//! exec_bench executor N CONCURRENCY IMAGE   N trivial execs (`true`) through the Executor
//! exec_bench rss      N IMAGE               RSS of this process with N execs running
//! exec_bench oom      N IMAGE               OOM detection delay over N real OOM kills
//! ```
//! The floor uses the same container definition as the executor (entrypoint, binds, host
//! network), so the difference is the agent's own work: manifests, fsyncs, directories, logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use reflow_agent::clock::SystemClock;
use reflow_agent::digest::Digest;
use reflow_agent::docker::bollard::BollardRuntime;
use reflow_agent::executor::{Executor, ExecutorConfig};
use reflow_agent::manifest::ExecState;
use reflow_agent::model::ExecConfig;

fn entrypoint() -> Vec<String> {
    ["/bin/bash", "-e", "-l", "-o", "pipefail", "-c", "true"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

async fn floor_one(docker: &Docker, image: &str, dir: &std::path::Path, i: usize) {
    let name = format!("reflow-bench-floor-{}-{i}", std::process::id());
    let d = dir.join(format!("c{i}"));
    for sub in ["arg", "tmp", "return"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let binds = ["arg", "tmp", "return"]
        .iter()
        .map(|s| format!("{}:/{s}", d.join(s).display()))
        .collect();
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(entrypoint()),
        cmd: Some(vec![]),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some("host".into()),
            oom_score_adj: Some(1000),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(name.clone()),
        ..Default::default()
    };
    docker.create_container(Some(opts), body).await.unwrap();
    docker
        .start_container(&name, None::<StartContainerOptions>)
        .await
        .unwrap();
    let mut w = docker.wait_container(
        &name,
        Some(WaitContainerOptions {
            condition: "not-running".into(),
        }),
    );
    let _ = w.next().await;
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
}

async fn run_concurrent<F, Fut>(n: usize, concurrency: usize, f: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = Instant::now();
    futures_util::stream::iter(0..n)
        .for_each_concurrent(concurrency, f)
        .await;
    t.elapsed()
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0] + f[1]) as f64 / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap()
}

async fn executor(prefix: &str, dir: &std::path::Path) -> Executor {
    let cfg = ExecutorConfig::new(format!("{prefix}{}", std::process::id()), dir);
    Executor::start(
        cfg,
        Arc::new(BollardRuntime::connect().unwrap()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap()
}

fn trivial(image: &str, cmd: &str) -> ExecConfig {
    ExecConfig {
        kind: "exec".into(),
        image: image.into(),
        cmd: cmd.into(),
        ..ExecConfig::default()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let dir = tempfile::tempdir().unwrap();
    match mode {
        "floor" => {
            let (n, c, image) = (
                args[2].parse().unwrap(),
                args[3].parse().unwrap(),
                args[4].clone(),
            );
            let docker = Docker::connect_with_local_defaults().unwrap();
            let elapsed = run_concurrent(n, c, |i| {
                let (docker, image, dir) =
                    (docker.clone(), image.clone(), dir.path().to_path_buf());
                async move { floor_one(&docker, &image, &dir, i).await }
            })
            .await;
            println!(
                "{{\"mode\":\"floor\",\"n\":{n},\"concurrency\":{c},\"seconds\":{},\"cpu_seconds\":{}}}",
                elapsed.as_secs_f64(),
                cpu_seconds()
            );
        }
        "executor" => {
            let (n, c, image): (usize, usize, String) = (
                args[2].parse().unwrap(),
                args[3].parse().unwrap(),
                args[4].clone(),
            );
            let ex = executor("bench", dir.path()).await;
            let run = format!("{:?}", Instant::now());
            let elapsed = run_concurrent(n, c, |i| {
                let (ex, image, run) = (ex.clone(), image.clone(), run.clone());
                async move {
                    let id = Digest::of(format!("{run}-{i}").as_bytes());
                    let e = ex.put(id, trivial(&image, "true")).await.unwrap();
                    e.wait().await.unwrap();
                    assert!(e.result().unwrap().err.is_none());
                }
            })
            .await;
            ex.shutdown().await;
            println!(
                "{{\"mode\":\"executor\",\"n\":{n},\"concurrency\":{c},\"seconds\":{},\"cpu_seconds\":{}}}",
                elapsed.as_secs_f64(),
                cpu_seconds()
            );
        }
        "rss" => {
            let (n, image): (usize, String) = (args[2].parse().unwrap(), args[3].clone());
            let ex = executor("benchrss", dir.path()).await;
            let before = rss_kib();
            let mut execs = Vec::new();
            for i in 0..n {
                let id = Digest::of(format!("rss-{}-{i}", std::process::id()).as_bytes());
                execs.push(ex.put(id, trivial(&image, "sleep 120")).await.unwrap());
            }
            for e in &execs {
                e.wait_until(ExecState::Running).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let during = rss_kib();
            for e in &execs {
                ex.remove(&e.id()).await.unwrap();
            }
            println!(
                "{{\"mode\":\"rss\",\"n\":{n},\"rss_kib_idle\":{before},\"rss_kib_running\":{during}}}"
            );
        }
        "oom" => {
            let (n, image): (usize, String) = (args[2].parse().unwrap(), args[3].clone());
            let kmsg = reflow_agent::oom::kmsg::KmsgMonitor::start(Arc::new(SystemClock));
            let mut cfg =
                ExecutorConfig::new(format!("benchoom{}", std::process::id()), dir.path());
            cfg.hard_mem_limit = true;
            let mut ports = reflow_agent::executor::ExecutorPorts::new(
                Arc::new(BollardRuntime::connect().unwrap()),
                Arc::new(SystemClock),
            );
            ports.oom_detectors = vec![Arc::new(kmsg.clone())];
            let ex = reflow_agent::executor::Executor::start_with(cfg, ports)
                .await
                .unwrap();
            let mut delays_ms = Vec::new();
            for i in 0..n {
                let id = Digest::of(format!("oom-{}-{i}", std::process::id()).as_bytes());
                let mut c = trivial(&image, "x=$(head -c 200000000 /dev/zero | tr '\\0' a)");
                c.resources.set("mem", (32u64 << 20) as f64);
                let e = ex.put(id, c).await.unwrap();
                e.wait().await.unwrap();
                let classified = reflow_agent::clock::Clock::now(&SystemClock);
                let m = e.manifest();
                let ev = m.oom.expect("an OOM with evidence");
                assert!(
                    ev.corroborated_by
                        .contains(&reflow_agent::oom::OomSource::Kmsg)
                        || ev.source == reflow_agent::oom::OomSource::Kmsg
                );
                delays_ms.push((classified - ev.time).num_microseconds().unwrap() as f64 / 1000.0);
            }
            kmsg.stop();
            delays_ms.sort_by(f64::total_cmp);
            let med = delays_ms[delays_ms.len() / 2];
            println!(
                "{{\"mode\":\"oom\",\"n\":{n},\"delay_ms_min\":{},\"delay_ms_median\":{med},\"delay_ms_max\":{}}}",
                delays_ms[0],
                delays_ms[delays_ms.len() - 1]
            );
        }
        _ => {
            eprintln!(
                "usage: exec_bench floor|executor N CONCURRENCY IMAGE | rss N IMAGE | oom N IMAGE"
            );
            std::process::exit(2);
        }
    }
}
