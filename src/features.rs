//! Which optional backends this build carries (cargo features `amqp`, `sqs`, `s3`, `dynamodb`,
//! `ecr`, all on by default), and how a URL that needs a missing one is named in errors.
//!
//! A build without a backend still parses every configuration; what needs the missing code is
//! refused at start with the feature to enable, never silently ignored.

/// The cargo feature a URL's scheme needs, when this build lacks it.
pub fn missing_for_url(url: &str) -> Option<&'static str> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "amqp" | "amqps" if !cfg!(feature = "amqp") => Some("amqp"),
        "sqs" if !cfg!(feature = "sqs") => Some("sqs"),
        "s3" if !cfg!(feature = "s3") => Some("s3"),
        _ => None,
    }
}

/// The optional backends this build carries, by cargo feature name.
#[must_use]
pub fn built() -> Vec<&'static str> {
    [
        ("amqp", cfg!(feature = "amqp")),
        ("sqs", cfg!(feature = "sqs")),
        ("s3", cfg!(feature = "s3")),
        ("dynamodb", cfg!(feature = "dynamodb")),
        ("ecr", cfg!(feature = "ecr")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// The message for a use of `what` that needs `feature`.
pub fn not_built(what: &str, feature: &str) -> String {
    format!(
        "{what} needs the `{feature}` cargo feature, which this build of reflow-agent does not have \
         (rebuild with `--features {feature}`, or use the default features)"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    // It holds for builds with every backend (the default).
    #[cfg(all(feature = "amqp", feature = "sqs", feature = "s3"))]
    fn default_builds_have_every_backend() {
        for url in [
            "amqp://h/v",
            "amqps://h",
            "sqs://q",
            "s3://b/p",
            "spool:///x",
            "file:///x",
        ] {
            assert_eq!(super::missing_for_url(url), None, "{url}");
        }
        assert!(super::not_built("sqs://q", "sqs").contains("--features sqs"));
    }
}
