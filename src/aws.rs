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

/// The HTTP client of every AWS call: hyper on rustls with ring and the platform's root
/// certificates (the SDK's default client is the same on aws-lc, a second crypto library).
#[cfg(feature = "aws")]
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Loads the SDK configuration.
#[cfg(feature = "aws")]
pub async fn sdk_config(s: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
    if let Some(r) = &s.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &s.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// The SDK configuration, loaded on first use and shared by every AWS client of the agent
/// (TaskDB, S3, ECR). An agent that never touches AWS never loads it: no credential chain, no
/// instance-metadata probe, and about 8 MiB less memory.
#[cfg(feature = "aws")]
#[derive(Debug, Default)]
pub struct LazySdk {
    settings: AwsSettings,
    sdk: tokio::sync::OnceCell<SdkConfig>,
}

#[cfg(feature = "aws")]
impl LazySdk {
    /// A configuration to be loaded from `settings` when first needed.
    pub fn new(settings: AwsSettings) -> Self {
        LazySdk {
            settings,
            sdk: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the configuration was loaded.
    pub fn loaded(&self) -> bool {
        self.sdk.initialized()
    }

    /// The configuration, loading it on the first call.
    pub async fn get(&self) -> &SdkConfig {
        self.sdk
            .get_or_init(|| async {
                tracing::debug!("Loading the AWS SDK configuration.");
                sdk_config(&self.settings).await
            })
            .await
    }
}

/// An SDK interceptor that counts every attempt of every call (one HTTP request each) in
/// [`crate::requests`], by the operation's service and name (`SQS`/`SendMessage`). Every AWS
/// client of the agent carries it.
#[cfg(feature = "aws")]
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

#[cfg(feature = "aws")]
impl aws_smithy_runtime_api::client::interceptors::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(m) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            crate::requests::count(m.service(), m.name());
        }
        Ok(())
    }
}
