//! AMQP URLs from configs and the environment, cluster host lists included: splitting never
//! panics, every broker URL keeps the scheme, and no redacted form shows a password.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reflow_agent::queue::amqp_url as amqp;
use reflow_agent::queue::redact;

fuzz_target!(|data: &[u8]| {
    if let Ok(url) = std::str::from_utf8(data) {
        if let Ok((base, _topology)) = amqp::split_url(url) {
            for host in amqp::hosts(&base) {
                let scheme = base.split_once("://").map(|(s, _)| s);
                assert_eq!(host.split_once("://").map(|(s, _)| s), scheme);
                // What follows the scheme never shows the password (the scheme part of a
                // garbage URL is shown as it is).
                let shown = redact(&host);
                if let Some((_, rest)) = host.split_once("://")
                    && let Some((userinfo, _)) = rest.rsplit_once('@')
                    && let Some((_, password)) = userinfo.split_once(':')
                    && password.len() > 3
                    && let Some((_, shown_rest)) = shown.split_once("://")
                {
                    assert!(!shown_rest.contains(&format!(":{password}@")), "{shown}");
                }
            }
        }
    }
});
