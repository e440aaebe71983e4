//! [`TaskDb`] on DynamoDB through the official AWS SDK. The table's key schema and item fields
//! are in docs/taskdb.md. This is the only module that names `aws_sdk_dynamodb` types.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

use super::{TaskDb, TaskDbError};
use crate::digest::Digest;
use crate::resources::Resources;
use crate::time::{self, Time};

/// Error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
];

/// Maps an SDK error: throttling, 5xx and transport failures are Temporary; the rest Permanent.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    op: &'static str,
    e: SdkError<E, R>,
) -> TaskDbError {
    let message = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
    let transient = match &e {
        SdkError::ServiceError(se) => se
            .err()
            .code()
            .is_some_and(|c| TRANSIENT_CODES.contains(&c)),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => false,
    };
    if transient {
        TaskDbError::Temporary { op, message }
    } else {
        TaskDbError::Permanent { op, message }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// TaskDB rows in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbTaskDb {
    client: Client,
    table: String,
}

impl DynamoDbTaskDb {
    /// An update of the claim row of `command_id`, with `#o` (Owner), `#s` (State), `#t` (TTL)
    /// and `:me` (`owner`) bound for its expressions.
    fn owners_claim_update(
        &self,
        command_id: &str,
        owner: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("ID", s(super::claims::claim_row(command_id).hex()))
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_names("#s", "State")
            .expression_attribute_names("#t", "TTL")
            .expression_attribute_values(":me", s(owner))
    }

    /// Rows in `table`, with region, endpoint and credentials from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        DynamoDbTaskDb {
            client: Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(sdk)
                    .interceptor(crate::aws::CountRequests)
                    .build(),
            ),
            table: table.into(),
        }
    }

    /// Creates the table (for development: on-demand billing, hash key `ID`); an existing table
    /// is fine.
    ///
    /// # Errors
    /// Any failure other than "already exists".
    pub async fn create_table(&self) -> Result<(), TaskDbError> {
        let attr = AttributeDefinition::builder()
            .attribute_name("ID")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| TaskDbError::Permanent {
                op: "create table",
                message: e.to_string(),
            })?;
        let key = KeySchemaElement::builder()
            .attribute_name("ID")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| TaskDbError::Permanent {
                op: "create table",
                message: e.to_string(),
            })?;
        match self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se))
                if se.err().code() == Some("ResourceInUseException") =>
            {
                Ok(())
            }
            Err(e) => Err(classify("create table", e)),
        }
    }

    /// A row's string and number attributes (numbers in decimal), for inspection and tests.
    ///
    /// # Errors
    /// SDK failures.
    pub async fn row(&self, row: Digest) -> Result<Option<HashMap<String, String>>, TaskDbError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("ID", s(row.hex()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("get row", e))?;
        Ok(out.item.map(|item| {
            item.into_iter()
                .filter_map(|(k, v)| match v {
                    AttributeValue::S(v) | AttributeValue::N(v) => Some((k, v)),
                    _ => None,
                })
                .collect()
        }))
    }

    async fn put(
        &self,
        op: &'static str,
        item: HashMap<String, AttributeValue>,
    ) -> Result<(), TaskDbError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(op, e))
    }

    async fn set(
        &self,
        op: &'static str,
        row: Digest,
        field: &str,
        t: Time,
    ) -> Result<(), TaskDbError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("ID", s(row.hex()))
            // `Date` and `TTL` are reserved words in DynamoDB expressions.
            .update_expression("SET #f = :v, #d = :d, #t = :ttl")
            .expression_attribute_names("#f", field)
            .expression_attribute_names("#d", "Date")
            .expression_attribute_names("#t", "TTL")
            .expression_attribute_values(":v", s(time::format(&t)))
            .expression_attribute_values(":d", s(t.format("%Y-%m-%d").to_string()))
            .expression_attribute_values(":ttl", n(t + ROW_RETENTION))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(op, e))
    }
}

fn base_item(
    row: Digest,
    kind: &str,
    resources: &Resources,
    start: Time,
) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("ID".to_string(), s(row.hex())),
        ("ID4".to_string(), s(row.short())),
        ("Type".to_string(), s(kind)),
        (
            "Resources".to_string(),
            s(serde_json::to_string(resources).unwrap_or_default()),
        ),
        ("StartTime".to_string(), s(time::format(&start))),
        ("Date".to_string(), s(start.format("%Y-%m-%d").to_string())),
        ("Keepalive".to_string(), s(time::format(&start))),
        ("TTL".to_string(), n(start + ROW_RETENTION)),
    ])
}

/// How long a pool or alloc row outlives its last write before DynamoDB's TTL may delete it.
pub const ROW_RETENTION: chrono::Duration = chrono::Duration::days(30);

#[async_trait]
impl TaskDb for DynamoDbTaskDb {
    async fn start_pool(
        &self,
        row: Digest,
        pool_id: &str,
        resources: &Resources,
        start: Time,
    ) -> Result<(), TaskDbError> {
        let mut item = base_item(row, "pool", resources, start);
        item.insert("PoolID".into(), s(pool_id));
        self.put("start pool", item).await
    }

    async fn start_alloc(
        &self,
        row: Digest,
        pool: Digest,
        alloc_id: &str,
        resources: &Resources,
        start: Time,
    ) -> Result<(), TaskDbError> {
        let mut item = base_item(row, "alloc", resources, start);
        item.insert("PoolID".into(), s(pool.hex()));
        item.insert("AllocID".into(), s(alloc_id));
        self.put("start alloc", item).await
    }

    async fn keepalive(&self, row: Digest, until: Time) -> Result<(), TaskDbError> {
        self.set("keepalive", row, "Keepalive", until).await
    }

    async fn set_end_time(&self, row: Digest, end: Time) -> Result<(), TaskDbError> {
        self.set("end time", row, "EndTime", end).await
    }

    async fn set_state(&self, row: Digest, state: &str, at: Time) -> Result<(), TaskDbError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("ID", s(row.hex()))
            .update_expression("SET #s = :s, StateTime = :t")
            .expression_attribute_names("#s", "State")
            .expression_attribute_values(":s", s(state))
            .expression_attribute_values(":t", s(time::format(&at)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("set state", e))
    }
}

/// Epoch seconds as a DynamoDB number.
fn n(t: Time) -> AttributeValue {
    AttributeValue::N(t.timestamp().to_string())
}

/// How long a claim row outlives its lease before DynamoDB's TTL may delete it: long enough
/// that a redelivery still finds a done claim (docs/taskdb.md).
const CLAIM_TTL_SLACK: chrono::Duration = chrono::Duration::days(1);

/// Whether `e` is DynamoDB refusing a write whose condition did not hold.
fn condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

/// The outcome of a conditional write: whether its condition held (a refusal is no error).
fn conditional<O, E, R>(op: &'static str, r: Result<O, SdkError<E, R>>) -> Result<bool, TaskDbError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(_) => Ok(true),
        Err(e) if condition_failed(&e) => Ok(false),
        Err(e) => Err(classify(op, e)),
    }
}

impl DynamoDbTaskDb {
    /// The claim row of `command_id`: owner, lease end and whether it is done.
    async fn claim_row(
        &self,
        command_id: &str,
    ) -> Result<Option<(String, Time, bool)>, TaskDbError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("ID", s(super::claims::claim_row(command_id).hex()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("read claim", e))?;
        Ok(out.item.map(|item| {
            let owner = match item.get("Owner") {
                Some(AttributeValue::S(o)) => o.clone(),
                _ => String::new(),
            };
            let until = match item.get("LeaseUntil") {
                Some(AttributeValue::N(v)) => v
                    .parse::<i64>()
                    .ok()
                    .and_then(|s| chrono::DateTime::from_timestamp(s, 0)),
                _ => None,
            }
            .unwrap_or_default();
            let done = matches!(item.get("State"), Some(AttributeValue::S(s)) if s == "done");
            (owner, until, done)
        }))
    }
}

#[async_trait]
impl super::claims::ClaimStore for DynamoDbTaskDb {
    async fn claim(
        &self,
        command_id: &str,
        owner: &str,
        now: Time,
        until: Time,
    ) -> Result<super::claims::Claim, TaskDbError> {
        use super::claims::{Claim, claim_row, decide};
        let row = claim_row(command_id);
        let item = HashMap::from([
            ("ID".to_string(), s(row.hex())),
            ("ID4".to_string(), s(row.short())),
            ("Type".to_string(), s("claim")),
            ("CommandID".to_string(), s(command_id)),
            ("Owner".to_string(), s(owner)),
            ("State".to_string(), s("running")),
            ("LeaseUntil".to_string(), n(until)),
            ("TTL".to_string(), n(until + CLAIM_TTL_SLACK)),
            ("Keepalive".to_string(), s(time::format(&now))),
        ]);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(ID) OR (#s = :running AND (#o = :me OR LeaseUntil <= :now))",
            )
            .expression_attribute_names("#s", "State")
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match put {
            Ok(_) => Ok(Claim::Ours),
            Err(e) if condition_failed(&e) => {
                let current = self.claim_row(command_id).await?;
                Ok(
                    match decide(
                        current.as_ref().map(|(o, u, d)| (o.as_str(), *u, *d)),
                        owner,
                        now,
                    ) {
                        // The row changed between the write and the read: try again later.
                        Claim::Ours => Claim::Held {
                            owner: current.map(|c| c.0).unwrap_or_default(),
                            until: now,
                        },
                        other => other,
                    },
                )
            }
            Err(e) => Err(classify("claim", e)),
        }
    }

    async fn renew(&self, command_id: &str, owner: &str, until: Time) -> Result<bool, TaskDbError> {
        let r = self
            .owners_claim_update(command_id, owner)
            .update_expression("SET LeaseUntil = :u, #t = :ttl")
            .condition_expression("#o = :me AND #s = :running")
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":u", n(until))
            .expression_attribute_values(":ttl", n(until + CLAIM_TTL_SLACK))
            .send()
            .await;
        conditional("renew claim", r)
    }

    async fn done(&self, command_id: &str, owner: &str, expires: Time) -> Result<(), TaskDbError> {
        let r = self
            .owners_claim_update(command_id, owner)
            .update_expression("SET #s = :done, LeaseUntil = :u, #t = :u")
            .condition_expression("#o = :me")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":u", n(expires))
            .send()
            .await;
        // A refusal means another agent took over meanwhile: its claim stands.
        conditional("finish claim", r).map(|_| ())
    }

    async fn release(&self, command_id: &str, owner: &str) -> Result<(), TaskDbError> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("ID", s(super::claims::claim_row(command_id).hex()))
            .condition_expression("#o = :me AND #s = :running")
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_names("#s", "State")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":running", s("running"))
            .send()
            .await;
        conditional("release claim", r).map(|_| ())
    }
}
