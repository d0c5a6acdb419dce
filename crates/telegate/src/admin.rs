//! `telegate admin …`: the admin API for people, one subcommand per call.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use telegate_admin_proto::AdminClient;
use telegate_admin_proto::pb::{self, Origin};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel as Transport;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Admin API address.
    #[arg(
        long,
        env = "TELEGATE_ADMIN_ENDPOINT",
        default_value = "http://127.0.0.1:9899"
    )]
    pub endpoint: String,
    /// Bearer token.
    #[arg(long, env = "TELEGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
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

/// A refusal in a person's words: the code and what the API said.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the admin API refused the call: {:?}: {}",
        status.code(),
        status.message()
    )
}

/// Makes the call and prints the answer.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let out = call(a).await?;
    crate::process::print_all(&format!("{out}\n"));
    Ok(())
}

/// Makes the call; the answer as text.
pub async fn call(a: Args) -> anyhow::Result<String> {
    let transport = Transport::from_shared(a.endpoint.clone())
        .context("--endpoint is not a URL such as http://host:9899")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", a.endpoint))?;
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
