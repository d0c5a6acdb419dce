//! `telegate admin …`: the admin API for people, one subcommand per call, over plain HTTP/2
//! or TLS (trusting `--admin-ca` only, with a client certificate when the API asks for one).

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use std::error::Error as _;
use std::path::{Path, PathBuf};
use telegate_admin_proto::AdminClient;
use telegate_admin_proto::pb::{self, Origin};
use telegate_gateway::support::{PemKind, error_chain, read_pem};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Admin API address; with --admin-ca, http:// becomes https://.
    #[arg(
        long,
        env = "TELEGATE_ADMIN_ENDPOINT",
        default_value = "http://127.0.0.1:9899"
    )]
    pub endpoint: String,
    /// Bearer token.
    #[arg(long, env = "TELEGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Connect over TLS, trusting only this CA certificate (PEM) for the API's certificate.
    #[arg(long, env = "TELEGATE_ADMIN_CA", value_name = "PATH")]
    pub admin_ca: Option<PathBuf>,
    /// Client certificate (PEM), for an admin API that requires one (admin.client_ca).
    #[arg(
        long,
        env = "TELEGATE_ADMIN_CERT",
        value_name = "PATH",
        requires_all = ["admin_key", "admin_ca"]
    )]
    pub admin_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "TELEGATE_ADMIN_KEY",
        value_name = "PATH",
        requires = "admin_cert"
    )]
    pub admin_key: Option<PathBuf>,
    /// Channel through which the person made the change.
    #[arg(long, value_enum, default_value_t = ChannelArg::Api)]
    pub channel: ChannelArg,
    /// Version of the text the person agreed to or was shown.
    #[arg(long, default_value = "")]
    pub text_version: String,
    /// Who makes the change (operator id).
    #[arg(long, default_value = "")]
    pub actor: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ChannelArg {
    App,
    HeadUnit,
    CallCentre,
    Api,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Grant standing consent for a purpose.
    Grant { vin: String, purpose: String },
    /// Withdraw standing consent for a purpose.
    Withdraw { vin: String, purpose: String },
    /// Object to a purpose (`--lift` to lift the objection).
    Object {
        vin: String,
        purpose: String,
        #[arg(long)]
        lift: bool,
    },
    /// Restrict all processing (`--lift` to lift it).
    Restrict {
        vin: String,
        #[arg(long)]
        lift: bool,
    },
    /// Activate a feature (`--off` to deactivate).
    Activate {
        vin: String,
        feature: String,
        #[arg(long)]
        off: bool,
    },
    /// Record a breakdown call's consent scopes; `--request-snapshot` for calls placed in the app.
    CallConsent {
        vin: String,
        call_id: String,
        #[arg(long)]
        assistance: bool,
        #[arg(long)]
        dealer: bool,
        #[arg(long)]
        request_snapshot: bool,
    },
    /// Show the vehicle's state.
    State { vin: String },
    /// Explain what happens to a frame (a VehicleFrame in proto3-JSON, from a file).
    Explain { frame: std::path::PathBuf },
    /// Block the account; its data is erased after the retention check.
    Block { vin: String },
    /// Erase the vehicle's state and key material.
    Erase { vin: String },
    /// Export everything about the vehicle (JSON).
    Export { vin: String },
    /// Open a sealed VIN.
    Unseal { sealed: String },
}

/// Where the CLI connects and how.
struct Target {
    endpoint: String,
    tls: bool,
    client_certificate: bool,
}

/// How far a failed connection got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// TCP, and TLS as far as this side can tell.
    Connect,
    /// The call, after the connection was up.
    Call,
}

/// A failed call in a person's words: what the API answered, or why the connection failed.
fn refused(target: &Target, status: tonic::Status) -> anyhow::Error {
    match status.source() {
        // Made up on this side: the call never got an answer.
        Some(cause) => unreachable(target, Stage::Call, cause),
        None => anyhow::anyhow!(
            "the admin API refused the call: {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// A connection that failed, with what to do about it. Names files and hosts, never their
/// contents.
fn unreachable(
    target: &Target,
    stage: Stage,
    e: &(dyn std::error::Error + 'static),
) -> anyhow::Error {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    const NEEDS_CERTIFICATE: &str =
        "the admin API requires a client certificate: pass --admin-cert and --admin-key";
    const CERTIFICATE_REFUSED: &str = "the admin API did not accept the client certificate \
         (--admin-cert): it must chain to the CA the API trusts (admin.client_ca) and be valid";
    let advice = match tls_error(e) {
        Some(Tls::AlertReceived(Alert::CertificateRequired)) => NEEDS_CERTIFICATE,
        Some(Tls::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::AccessDenied,
        )) => CERTIFICATE_REFUSED,
        Some(Tls::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        )) => {
            "certificate not trusted: the admin API's certificate is not issued for the host in \
             --endpoint; connect by a name it lists (`telegate pki init --host NAME`)"
        }
        Some(Tls::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. })) => {
            "certificate not trusted: the admin API's certificate has expired"
        }
        Some(Tls::InvalidCertificate(_)) => {
            "certificate not trusted: the admin API's certificate does not chain to --admin-ca"
        }
        Some(_) => "the TLS handshake failed",
        None if !target.tls => {
            "if the admin API serves TLS (admin.tls_cert), pass --admin-ca with the CA that \
             issued its certificate"
        }
        // With TLS 1.3 the server judges the client's certificate after this side has
        // finished its handshake; its alert then often reaches HTTP/2 as a closed stream
        // only. A TLS connection closed before any answer is that refusal.
        None if stage == Stage::Call && !target.client_certificate => NEEDS_CERTIFICATE,
        None if stage == Stage::Call => CERTIFICATE_REFUSED,
        None => "is the admin API listening there?",
    };
    anyhow::anyhow!(
        "cannot reach the admin API at {}: {advice} ({})",
        target.endpoint,
        error_chain(e)
    )
}

/// The rustls error behind a transport error, wherever it sits in the chain (an IO error
/// carries it inside rather than as its source).
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        cause = e.source();
    }
    None
}

/// The PEM file given to `flag`, read and checked to hold what `kind` says, so that a wrong
/// file is named as such rather than showing up later as an untrusted server.
fn pem_of(flag: &str, path: &Path, kind: PemKind) -> anyhow::Result<Vec<u8>> {
    read_pem(path, kind).map_err(|problem| anyhow::anyhow!("{flag}: {problem}"))
}

/// The endpoint to dial: TLS when `--admin-ca` is given (an `http://` endpoint becomes
/// `https://`), plain HTTP/2 otherwise.
fn target(a: &Args) -> anyhow::Result<Target> {
    let tls = a.admin_ca.is_some();
    let endpoint = match (a.endpoint.strip_prefix("http://"), tls) {
        (Some(rest), true) => format!("https://{rest}"),
        (None, false) if a.endpoint.starts_with("https://") => bail!(
            "--endpoint is https://, but no --admin-ca: pass the CA certificate (PEM) that \
             issued the admin API's certificate"
        ),
        _ => a.endpoint.clone(),
    };
    Ok(Target {
        endpoint,
        tls,
        client_certificate: a.admin_cert.is_some(),
    })
}

/// The channel to the admin API.
async fn connect(a: &Args, target: &Target) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = Endpoint::from_shared(target.endpoint.clone())
        .context("--endpoint is not a URL such as http://host:9899")?;
    if let Some(ca) = &a.admin_ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem_of(
            "--admin-ca",
            ca,
            PemKind::Certificates,
        )?));
        if let (Some(cert), Some(key)) = (&a.admin_cert, &a.admin_key) {
            tls = tls.identity(Identity::from_pem(
                pem_of("--admin-cert", cert, PemKind::Certificates)?,
                pem_of("--admin-key", key, PemKind::PrivateKey)?,
            ));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| {
            anyhow::anyhow!(
                "--admin-ca, --admin-cert or --admin-key is not usable: {}",
                error_chain(&e)
            )
        })?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| unreachable(target, Stage::Connect, &e))
}

/// Makes the call and prints the answer.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let out = call(a).await?;
    crate::process::print_all(&format!("{out}\n"));
    Ok(())
}

/// Makes the call; the answer as text.
pub async fn call(a: Args) -> anyhow::Result<String> {
    let target = target(&a)?;
    let transport = connect(&a, &target).await?;
    let refused = |status| refused(&target, status);
    let bearer: MetadataValue<_> = format!("Bearer {}", a.token)
        .parse()
        .context("the token has characters a header cannot carry")?;
    let mut client = AdminClient::with_interceptor(transport, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let origin = Some(Origin {
        channel: match a.channel {
            ChannelArg::App => pb::Channel::App,
            ChannelArg::HeadUnit => pb::Channel::HeadUnit,
            ChannelArg::CallCentre => pb::Channel::CallCentre,
            ChannelArg::Api => pb::Channel::Api,
        } as i32,
        text_version: a.text_version,
        actor: a.actor,
        at_ms: 0,
    });
    let state = |r: tonic::Response<pb::StateReply>| r.into_inner().state_json;
    Ok(match a.command {
        AdminCommand::Grant { vin, purpose } => state(
            client
                .set_consent(pb::ConsentChange {
                    vin,
                    purpose,
                    granted: true,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Withdraw { vin, purpose } => state(
            client
                .set_consent(pb::ConsentChange {
                    vin,
                    purpose,
                    granted: false,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Object { vin, purpose, lift } => state(
            client
                .set_objection(pb::PurposeFlag {
                    vin,
                    purpose,
                    on: !lift,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Restrict { vin, lift } => state(
            client
                .set_restriction(pb::Flag {
                    vin,
                    on: !lift,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Activate { vin, feature, off } => state(
            client
                .set_activation(pb::ActivationChange {
                    vin,
                    feature,
                    active: !off,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::CallConsent {
            vin,
            call_id,
            assistance,
            dealer,
            request_snapshot,
        } => state(
            client
                .record_call_consent(pb::CallConsent {
                    vin,
                    call_id,
                    assistance,
                    dealer,
                    request_snapshot,
                    origin,
                })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::State { vin } => state(
            client
                .get_state(pb::Subject { vin })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Explain { frame } => {
            let frame_json = std::fs::read_to_string(&frame)
                .with_context(|| format!("cannot read {}", frame.display()))?;
            client
                .explain(pb::ExplainRequest { frame_json })
                .await
                .map_err(refused)?
                .into_inner()
                .text
        }
        AdminCommand::Block { vin } => state(
            client
                .block_account(pb::Subject { vin })
                .await
                .map_err(refused)?,
        ),
        AdminCommand::Erase { vin } => {
            let existed = client
                .erase(pb::Subject { vin })
                .await
                .map_err(refused)?
                .into_inner()
                .existed;
            format!("{{\"erased\": true, \"existed\": {existed}}}")
        }
        AdminCommand::Export { vin } => {
            client
                .export(pb::Subject { vin })
                .await
                .map_err(refused)?
                .into_inner()
                .json
        }
        AdminCommand::Unseal { sealed } => {
            client
                .unseal(pb::UnsealRequest { sealed })
                .await
                .map_err(refused)?
                .into_inner()
                .vin
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        admin: Args,
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        let args = ["telegate-admin", "--token", "t"]
            .iter()
            .chain(flags)
            .chain(&["state", "V"]);
        Cli::try_parse_from(args).map(|cli| cli.admin)
    }

    #[test]
    fn the_ca_flag_chooses_tls_and_https_needs_it() {
        let plain = target(&parse(&[]).expect("parses")).expect("plain");
        assert_eq!(plain.endpoint, "http://127.0.0.1:9899");
        assert!(!plain.tls);
        let tls = target(&parse(&["--admin-ca", "ca.crt"]).expect("parses")).expect("tls");
        assert_eq!(tls.endpoint, "https://127.0.0.1:9899");
        assert!(tls.tls && !tls.client_certificate);
        let https = parse(&["--endpoint", "https://gw:9899"]).expect("parses");
        let err = target(&https).err().expect("https without a CA");
        assert!(err.to_string().contains("--admin-ca"), "{err}");
    }

    #[test]
    fn a_client_certificate_comes_with_its_key_and_the_ca() {
        let ca = ["--admin-ca", "ca.crt"];
        let cert = ["--admin-cert", "op.crt"];
        let key = ["--admin-key", "op.key"];
        assert!(parse(&[&ca[..], &cert[..]].concat()).is_err(), "no key");
        assert!(
            parse(&[&ca[..], &key[..]].concat()).is_err(),
            "no certificate"
        );
        assert!(parse(&[&cert[..], &key[..]].concat()).is_err(), "no CA");
        let both = parse(&[&ca[..], &cert[..], &key[..]].concat()).expect("parses");
        assert!(target(&both).expect("tls").client_certificate);
    }

    #[test]
    fn a_wrong_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("secret.pem");
        std::fs::write(&file, "SECRET-LOOKING-LINE\n").expect("write");
        for kind in [PemKind::Certificates, PemKind::PrivateKey] {
            let err = pem_of("--admin-key", &file, kind).expect_err("not PEM");
            let text = format!("{err:#}");
            assert!(text.starts_with("--admin-key: "), "{text}");
            assert!(!text.contains("SECRET"), "{text}");
        }
    }
}
