//! Every test under tests/ in one test binary: component tests with fakes (`*_fake`, and the
//! checks of docs, golden files and layering) and the integration tests against real services
//! (`*_it`, feature `integration`). One binary links once; 22 of them linked the whole
//! dependency graph 22 times, which was most of the test build (bench/RESULTS.md, "Build, demo
//! and CI time"). nextest still runs every test in a process of its own.
// Every function here is a test or a test helper; the lint is for src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

mod admin_fake;
mod agent_fake;
mod blob_fake;
mod control_fake;
mod control_it;
mod deploy_examples;
mod executor_fake;
mod executor_it;
mod layers;
mod lease_it;
mod oom_it;
mod pool_fake;
mod pool_it;
mod python_client_it;
mod reflow_golden;
mod reflow_state_dir;
mod registry_it;
mod repo_it;
mod s3_it;
mod schema;
mod serve_it;
mod taskdb_it;
