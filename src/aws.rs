//! AWS SDK configuration: the SDK's standard chain (so `AWS_ENDPOINT_URL`, `AWS_REGION` and the
//! usual credential variables, profiles and instance roles work), with optional overrides from
//! the agent's config. Tests point the endpoint at a local emulator.

//!
//! [`AwsSettings`] is always part of the configuration; loading the SDK needs one of the AWS
//! features (`sqs`, `s3`, `dynamodb`, `ecr`).

#[cfg(feature = "aws")]
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Overrides on top of the standard chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    /// Region, e.g. `us-west-2`. Default: the chain's (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint URL for every service, e.g. `http://127.0.0.1:5000` for an emulator. Default:
    /// the chain's (`AWS_ENDPOINT_URL`), else AWS.
    pub endpoint_url: Option<String>,
}

/// Loads the SDK configuration.
#[cfg(feature = "aws")]
pub async fn sdk_config(s: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &s.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &s.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}
