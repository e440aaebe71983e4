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
    /// Rows in `table`, with region, endpoint and credentials from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        DynamoDbTaskDb {
            client: Client::new(sdk),
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

    /// A row's string attributes, for inspection and tests.
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
                    AttributeValue::S(v) => Some((k, v)),
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
            // `Date` is a reserved word in DynamoDB expressions.
            .update_expression("SET #f = :v, #d = :d")
            .expression_attribute_names("#f", field)
            .expression_attribute_names("#d", "Date")
            .expression_attribute_values(":v", s(time::format(&t)))
            .expression_attribute_values(":d", s(t.format("%Y-%m-%d").to_string()))
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
    ])
}

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
}
