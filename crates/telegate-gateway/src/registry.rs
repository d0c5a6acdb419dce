//! The schema registry. At start, the record schema of every `confluent-protobuf` service is
//! registered under `<topic>-value` (the TopicNameStrategy Confluent's clients assume) in a
//! registry that speaks the Confluent API (Confluent Schema Registry, Apicurio Registry's
//! `/apis/ccompat/v7`, Karapace), and the id it answers goes into the pack. Records then carry
//! that id in the Confluent wire format (`telegate_frame::schema`); nothing on the per-frame
//! path ever calls the registry. A registry that cannot be reached, or refuses the schema, stops
//! the start with its message.

use crate::support::{PemKind, error_chain, read_pem};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use telegate_frame::schema::{FRAME_PROTO, frame_descriptor};
use telegate_policy::{Pack, RecordEncoding};
use url::Url;

/// Where the registry is and how telegate talks to it (`[schema_registry]`). Its `Debug`
/// leaves the password out.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// The Confluent-compatible API's base URL, e.g. `http://registry:8080/apis/ccompat/v7`.
    pub url: Option<String>,
    /// Basic authentication: the user, with `password` or `password_file`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the registry's certificate must chain to; without one, the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// telegate's client certificate chain and key (PEM), for a registry that asks for mutual
    /// TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// How the schema is given to the registry.
    pub schema_form: SchemaForm,
    /// How long one registration may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("schema_form", &self.schema_form)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            password_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
            schema_form: SchemaForm::Descriptor,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The form the schema is registered in (docs/consumers.md compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaForm {
    /// The base64 of frame.proto's serialized `FileDescriptorProto`: what Confluent's clients
    /// ask for (`format=serialized`) and decode without a `.proto` parser.
    Descriptor,
    /// frame.proto's text.
    Text,
}

impl SchemaForm {
    fn schema(self) -> String {
        match self {
            SchemaForm::Descriptor => STANDARD.encode(frame_descriptor()),
            SchemaForm::Text => FRAME_PROTO.to_owned(),
        }
    }
}

/// A registry ready to take schemas: its URL checked, its credentials and certificates read.
/// Its `Debug` shows the URL and the user alone.
#[derive(Clone)]
pub struct SchemaRegistry {
    base: Url,
    client: reqwest::Client,
    auth: Option<(String, String)>,
    form: SchemaForm,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base", &self.base.as_str())
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

/// The registry's error body in the Confluent API.
#[derive(Debug, Deserialize)]
struct Refusal {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: String,
}

/// The longest part of a registry's message an error repeats (Apicurio's can quote a whole
/// schema).
const MESSAGE_LIMIT: usize = 600;

impl SchemaRegistry {
    /// The registry `config` describes, or None where no URL is set. Each problem is
    /// `(key, message)`, reported with the rest of the configuration's.
    pub fn from_config(
        config: &SchemaRegistryConfig,
    ) -> Result<Option<Self>, Vec<(&'static str, String)>> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let base = match Url::parse(url.trim_end_matches('/')) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => Some(u),
            Ok(_) => {
                problems.push(("schema_registry.url", "not an http or https URL".to_owned()));
                None
            }
            Err(e) => {
                problems.push(("schema_registry.url", format!("not a URL: {e}")));
                None
            }
        };
        if base
            .as_ref()
            .is_some_and(|u| !u.username().is_empty() || u.password().is_some())
        {
            problems.push((
                "schema_registry.url",
                "credentials in the URL: give them as schema_registry.username and password"
                    .to_owned(),
            ));
        }
        // PEM files are read and checked as the other TLS settings are; a problem names the
        // file and never quotes it.
        let pem = |key: &'static str, path: &PathBuf, kind: PemKind, problems: &mut Vec<_>| {
            read_pem(path, kind)
                .map_err(|e| problems.push((key, e)))
                .ok()
        };
        let password = match (&config.password, &config.password_file) {
            (Some(_), Some(_)) => {
                problems.push((
                    "schema_registry.password",
                    "set password or password_file, not both".to_owned(),
                ));
                None
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|p| p.trim_end().to_owned())
                .map_err(|e| {
                    problems.push((
                        "schema_registry.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    ))
                })
                .ok(),
            (None, None) => None,
        };
        let auth = match (&config.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            (Some(_), None) => {
                problems.push((
                    "schema_registry.username",
                    "needs schema_registry.password or password_file".to_owned(),
                ));
                None
            }
            (None, Some(_)) => {
                problems.push((
                    "schema_registry.password",
                    "needs schema_registry.username".to_owned(),
                ));
                None
            }
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .user_agent(concat!("telegate/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca {
            let certs = pem(
                "schema_registry.ca",
                path,
                PemKind::Certificates,
                &mut problems,
            )
            .map(|pem| reqwest::Certificate::from_pem_bundle(&pem));
            match certs {
                Some(Ok(certs)) => {
                    builder = builder.tls_built_in_root_certs(false);
                    for c in certs {
                        builder = builder.add_root_certificate(c);
                    }
                }
                Some(Err(e)) => problems.push(("schema_registry.ca", e.to_string())),
                None => {}
            }
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let cert = pem(
                    "schema_registry.client_cert",
                    cert,
                    PemKind::Certificates,
                    &mut problems,
                );
                let key = pem(
                    "schema_registry.client_key",
                    key,
                    PemKind::PrivateKey,
                    &mut problems,
                );
                if let (Some(mut chain), Some(key)) = (cert, key) {
                    chain.push(b'\n');
                    chain.extend_from_slice(&key);
                    match reqwest::Identity::from_pem(&chain) {
                        Ok(identity) => builder = builder.identity(identity),
                        Err(e) => problems.push(("schema_registry.client_cert", e.to_string())),
                    }
                }
            }
            (None, None) => {}
            _ => problems.push((
                "schema_registry.client_cert",
                "client_cert and client_key go together".to_owned(),
            )),
        }
        let client = builder
            .build()
            .map_err(|e| problems.push(("schema_registry", format!("HTTP client: {e}"))))
            .ok();
        match (base, client) {
            (Some(base), Some(client)) if problems.is_empty() => Ok(Some(Self {
                base,
                client,
                auth,
                form: config.schema_form,
            })),
            _ => Err(problems),
        }
    }

    /// Registers the record schema of every `confluent-protobuf` service of `pack` (topics
    /// already namespaced) and writes the ids into it.
    pub async fn register(&self, pack: &mut Pack) -> anyhow::Result<()> {
        let schema = self.form.schema();
        for service in pack
            .services
            .iter_mut()
            .filter(|s| s.encoding == RecordEncoding::ConfluentProtobuf)
        {
            let subject = format!("{}-value", service.topic);
            let id = self.register_one(&subject, &schema).await?;
            tracing::info!(subject, id, "record schema registered");
            service.schema_id = Some(id);
        }
        Ok(())
    }

    /// `POST /subjects/{subject}/versions`: the id of the schema under `subject`, the one it
    /// already had when the same schema was registered before.
    async fn register_one(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the schema registry URL cannot take a path"))?
            .extend(["subjects", subject, "versions"]);
        let mut request = self
            .client
            .post(url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .json(&serde_json::json!({ "schemaType": "PROTOBUF", "schema": schema }));
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "the schema registry at {} cannot be reached: {}",
                self.base,
                error_chain(&e)
            )
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let refusal = serde_json::from_str::<Refusal>(&body).unwrap_or(Refusal {
                error_code: None,
                message: body,
            });
            let code = refusal
                .error_code
                .map(|c| format!(", error {c}"))
                .unwrap_or_default();
            anyhow::bail!(
                "the schema registry refused the record schema for subject {subject} (HTTP \
                 {status}{code}): {}",
                shorten(&refusal.message)
            );
        }
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        serde_json::from_str::<Registered>(&body)
            .map(|r| r.id)
            .map_err(|_| {
                anyhow::anyhow!(
                    "the schema registry answered HTTP {status} for subject {subject} without \
                     an id: {}",
                    shorten(&body)
                )
            })
    }
}

fn shorten(message: &str) -> String {
    let message = message.trim();
    match message.char_indices().nth(MESSAGE_LIMIT) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> SchemaRegistryConfig {
        SchemaRegistryConfig {
            url: Some(url.to_owned()),
            ..SchemaRegistryConfig::default()
        }
    }

    fn keys(problems: Vec<(&'static str, String)>) -> Vec<&'static str> {
        problems.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn no_url_is_no_registry() {
        let none = SchemaRegistry::from_config(&SchemaRegistryConfig::default());
        assert!(matches!(none, Ok(None)));
    }

    #[test]
    fn each_problem_names_its_key() {
        let bad = |c: SchemaRegistryConfig| keys(SchemaRegistry::from_config(&c).expect_err("bad"));
        assert_eq!(bad(config("registry:8081")), ["schema_registry.url"]);
        assert_eq!(
            bad(config("http://user:secret@registry:8081")),
            ["schema_registry.url"]
        );
        assert_eq!(
            bad(SchemaRegistryConfig {
                username: Some("telegate".into()),
                ..config("http://registry:8081")
            }),
            ["schema_registry.username"]
        );
        assert_eq!(
            bad(SchemaRegistryConfig {
                ca: Some("/nonexistent/ca.pem".into()),
                client_cert: Some("/nonexistent/c.pem".into()),
                ..config("https://registry:8081")
            }),
            ["schema_registry.ca", "schema_registry.client_cert"]
        );
    }

    #[test]
    fn the_descriptor_form_is_base64_of_frame_proto_compiled() {
        let schema = SchemaForm::Descriptor.schema();
        assert_eq!(
            STANDARD.decode(schema).expect("base64"),
            frame_descriptor(),
            "what the registry gets decodes to the descriptor"
        );
        assert!(SchemaForm::Text.schema().contains("message VehicleFrame"));
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let c = SchemaRegistryConfig {
            username: Some("telegate".into()),
            password: Some("s3cret-registry-pw".into()),
            ..config("http://registry:8081")
        };
        let registry = SchemaRegistry::from_config(&c)
            .expect("valid")
            .expect("a registry");
        for text in [format!("{c:?}"), format!("{registry:?}")] {
            assert!(!text.contains("s3cret-registry-pw"), "{text}");
            assert!(text.contains("telegate"), "{text}");
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5_000);
        assert_eq!(shorten(&long).chars().count(), MESSAGE_LIMIT + 1);
        assert_eq!(shorten(" short "), "short");
    }
}
