//! The admin API over gRPC: the bearer token (and TLS) in front of [`super::AdminContext`]'s
//! changes and rights, each answered with the vehicle's state as JSON, without key material.

use super::{AdminContext, AdminError, Who, erase, export, redacted};
use crate::config::AdminAccess;
use crate::ledger::{Action, Channel};
use anyhow::Context;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use telegate_admin_proto::pb::{self, Origin};
use telegate_admin_proto::{Admin, AdminServer};
use telegate_frame::Vin;
use telegate_frame::now_ms;
use telegate_frame::pb::PlatformRequest;
use telegate_mqtt::Refusal;
use telegate_policy::{Account, StateFile, SubjectRecord, sealed_subject, unseal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Arc<AdminContext>,
}

/// Serves the admin API on `listen`, behind the bearer token and the TLS `access` sets, on a
/// task of `tasks`, until `stop` is cancelled (calls under way finish); returns the bound
/// address.
pub async fn serve(
    listen: SocketAddr,
    access: AdminAccess,
    ctx: Arc<AdminContext>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let mut server = tonic::transport::Server::builder();
    match &access.tls {
        Some(tls) => {
            server = server
                .tls_config(tls.server_config())
                .context("the admin API's TLS settings")?;
        }
        // Allowed, for a TLS-terminating proxy or sidecar beside the gateway, but said.
        None if !listen.ip().is_loopback() => tracing::warn!(
            %listen,
            "the admin API serves plain HTTP/2 beyond loopback: its bearer token crosses the \
             network in clear; set admin.tls_cert and admin.tls_key, or listen on 127.0.0.1 \
             behind a TLS-terminating proxy"
        ),
        None => {}
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if let Some(tls) = &access.tls {
        tracing::info!(
            %addr,
            client_certificates = tls.requires_client_certificate(),
            "admin API over TLS"
        );
    }
    let expected = format!("Bearer {}", access.token);
    let service = AdminServer::with_interceptor(AdminService { ctx }, move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(req)
        } else {
            metrics::counter!("telegate_admin_unauthenticated_total").increment(1);
            Err(Status::unauthenticated(
                "a valid `authorization: Bearer <token>` is required",
            ))
        }
    });
    // tonic sets TCP_NODELAY only on sockets it accepts itself: without it, Nagle's algorithm
    // holds a reply's last frame until the caller's delayed ACK, some 40 ms per call.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tasks.spawn(async move {
        if let Err(e) = server
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(addr)
}

pub(super) fn vin(s: &str) -> Result<Vin, AdminError> {
    Ok(Vin::parse(s)?)
}

fn who(origin: Option<Origin>) -> Who {
    let o = origin.unwrap_or_default();
    Who {
        channel: match pb::Channel::try_from(o.channel).unwrap_or(pb::Channel::Api) {
            pb::Channel::App => Channel::App,
            pb::Channel::HeadUnit => Channel::HeadUnit,
            pb::Channel::CallCentre => Channel::CallCentre,
            pb::Channel::Api | pb::Channel::Unspecified => Channel::Api,
        },
        text_version: o.text_version,
        actor: o.actor,
        reason: String::new(),
        at_ms: if o.at_ms > 0 { o.at_ms } else { now_ms() },
    }
}

fn state_reply(record: &SubjectRecord) -> Response<pb::StateReply> {
    Response::new(pb::StateReply {
        state_json: serde_json::to_string(&redacted(record)).unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn set_consent(
        &self,
        req: Request<pb::ConsentChange>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let r = req.into_inner();
        let vin = vin(&r.vin)?;
        let record = self
            .ctx
            .set_consent(vin, &r.purpose, r.granted, &who(r.origin))
            .await?;
        Ok(state_reply(&record))
    }

    async fn set_objection(
        &self,
        req: Request<pb::PurposeFlag>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let r = req.into_inner();
        let vin = vin(&r.vin)?;
        let record = self
            .ctx
            .set_objection(vin, &r.purpose, r.on, &who(r.origin))
            .await?;
        Ok(state_reply(&record))
    }

    async fn set_restriction(
        &self,
        req: Request<pb::Flag>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let r = req.into_inner();
        let vin = vin(&r.vin)?;
        let record = self.ctx.set_restriction(vin, r.on, &who(r.origin)).await?;
        Ok(state_reply(&record))
    }

    async fn set_activation(
        &self,
        req: Request<pb::ActivationChange>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let r = req.into_inner();
        let vin = vin(&r.vin)?;
        let record = self
            .ctx
            .set_activation(vin, &r.feature, r.active, &who(r.origin))
            .await?;
        Ok(state_reply(&record))
    }

    async fn record_call_consent(
        &self,
        req: Request<pb::CallConsent>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let r = req.into_inner();
        let vin = vin(&r.vin)?;
        if r.call_id.is_empty() || r.call_id.len() > 64 {
            return Err(AdminError::InvalidArgument("call_id: 1 to 64 characters".into()).into());
        }
        let who = who(r.origin);
        let scopes = telegate_policy::CallConsent {
            assistance: r.assistance,
            dealer: r.dealer,
        };
        let call = r.call_id.clone();
        let record = self
            .ctx
            .change(
                vin,
                &who,
                Action::CallConsent,
                &r.call_id,
                json!(scopes),
                |s| {
                    s.call_consents.insert(call, scopes);
                },
            )
            .await?;
        if r.request_snapshot {
            // A call placed in the app: the backend asks the vehicle for its data [002 L15].
            let request = PlatformRequest {
                request_id: format!("req-{:016x}", rand::random::<u64>()),
                kind: "breakdown-snapshot".into(),
                call_id: r.call_id,
                issued_at_ms: now_ms(),
            };
            // Through this edge, or through Kafka to the instance that holds the vehicle. The
            // consent stands either way; what became of the request is counted.
            self.ctx.requests.send(&vin, &request).await;
        }
        Ok(state_reply(&record))
    }

    async fn get_state(
        &self,
        req: Request<pb::Subject>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let vin = vin(&req.into_inner().vin)?;
        let record = self.ctx.state.get(&vin).unwrap_or_default();
        Ok(state_reply(&record))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainReply>, Status> {
        let frame = req.into_inner().frame_json;
        let (raw, _) = telegate_frame::decode(frame.as_bytes())
            .map_err(|e| AdminError::InvalidArgument(e.to_string()))?;
        let mut file = StateFile::default();
        if let Some(record) = Vin::parse(&raw.vin)
            .ok()
            .and_then(|v| self.ctx.state.get(&v))
        {
            file.subjects.insert(raw.vin.clone(), record);
        }
        let text = telegate_policy::explain(&self.ctx.pack, &frame, Some(&file), Some(now_ms()))
            .map_err(|e| AdminError::InvalidArgument(e.to_string()))?;
        Ok(Response::new(pb::ExplainReply { text }))
    }

    async fn block_account(
        &self,
        req: Request<pb::Subject>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let vin = vin(&req.into_inner().vin)?;
        let who = who(None);
        let at = who.at_ms;
        let delete_after_ms = at + self.ctx.block_grace.as_millis() as i64;
        let record = self
            .ctx
            .change(
                vin,
                &who,
                Action::Block,
                "",
                json!({ "delete_after_ms": delete_after_ms }),
                |s| {
                    s.account = Account::Blocked {
                        at_ms: at,
                        delete_after_ms,
                    }
                },
            )
            .await?;
        // The edge refuses it from now on; its live connection goes too.
        self.ctx.edge.close(&vin, Refusal::VehicleBlocked);
        Ok(state_reply(&record))
    }

    async fn erase(&self, req: Request<pb::Subject>) -> Result<Response<pb::EraseReply>, Status> {
        let vin = vin(&req.into_inner().vin)?;
        let mut who = who(None);
        who.actor = "api".into();
        let existed = erase(&self.ctx, &vin, &who).await?;
        Ok(Response::new(pb::EraseReply { existed }))
    }

    async fn export(&self, req: Request<pb::Subject>) -> Result<Response<pb::ExportReply>, Status> {
        let vin = vin(&req.into_inner().vin)?;
        let json = export(&self.ctx, &vin).await?;
        Ok(Response::new(pb::ExportReply {
            json: serde_json::to_string_pretty(&json).unwrap_or_default(),
        }))
    }

    async fn unseal(
        &self,
        req: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealReply>, Status> {
        let sealed = req.into_inner().sealed;
        let gone = || {
            AdminError::NotFound(
                "no key material for this value: the vehicle's data was erased, or it was never \
                 sealed here"
                    .into(),
            )
        };
        let id = sealed_subject(&sealed)
            .ok_or_else(|| AdminError::InvalidArgument("not a sealed value (tgs1.…)".into()))?;
        let secret = self.ctx.state.secret_of_subject(id).ok_or_else(gone)?;
        let opened = unseal(&secret, &sealed).ok_or_else(gone)?;
        Ok(Response::new(pb::UnsealReply {
            vin: opened.expose().to_owned(),
        }))
    }
}
