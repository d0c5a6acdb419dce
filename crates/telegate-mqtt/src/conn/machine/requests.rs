//! Subscriptions and the platform's requests to the vehicle: a vehicle subscribes only to
//! the platform's topics for it, and takes requests within the window it announced; a resumed
//! session sends again what the vehicle had not acknowledged.

use super::Machine;
use crate::Refusal;
use crate::conn::End;
use crate::rules::{is_concrete, may_subscribe};
use crate::sessions::lock;
use bytes::BytesMut;

impl Machine {
    pub(super) fn subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        let mut granted = Vec::with_capacity(filters.len());
        let mut refused = 0;
        for (filter, qos) in filters {
            let vin = match self.vin {
                Some(vin) => Some(vin),
                None if is_concrete(&filter) => self.vehicle_for(filter.as_bytes(), out)?,
                None => None,
            };
            match (vin, &self.session) {
                (Some(vin), Some(session)) if may_subscribe(&vin, &filter) => {
                    let qos = qos.min(1);
                    let mut s = lock(session);
                    s.subscriptions.retain(|(f, _)| *f != filter);
                    s.subscriptions.push((filter, qos));
                    granted.push(Some(qos));
                }
                _ => {
                    refused += 1;
                    granted.push(None);
                }
            }
        }
        for _ in 0..refused {
            self.ctx.refused(Refusal::SubscribeNotPermitted);
        }
        self.enc.suback(out, pkid, &granted);
        self.deliver(out);
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, pkid: u16, filters: &[String], out: &mut BytesMut) {
        let existed: Vec<bool> = match &self.session {
            Some(session) => {
                let mut s = lock(session);
                filters
                    .iter()
                    .map(|f| {
                        let before = s.subscriptions.len();
                        s.subscriptions.retain(|(g, _)| g != f);
                        s.subscriptions.len() < before
                    })
                    .collect()
            }
            None => vec![false; filters.len()],
        };
        self.enc.unsuback(out, pkid, &existed);
    }

    /// Sends queued requests while the vehicle's window has room.
    pub(super) fn deliver(&mut self, out: &mut BytesMut) {
        let Some(session) = &self.session else {
            return;
        };
        let mut s = lock(session);
        while s.inflight.len() < self.window {
            let Some(mut req) = s.queued.pop_front() else {
                break;
            };
            match s.granted_qos(&req.topic) {
                Some(1) => {
                    req.pkid = s.next_pkid();
                    self.enc
                        .publish(out, 1, req.pkid, &req.topic, &req.payload, false);
                    s.inflight.push_back(req);
                }
                Some(_) => self.enc.publish(out, 0, 0, &req.topic, &req.payload, false),
                // Unsubscribed since it was queued.
                None => self.ctx.stats.request(crate::Delivery::NoSubscriber),
            }
        }
    }

    /// A resumed session: requests sent before and not acknowledged go again, then the queue.
    pub(super) fn resend(&mut self, out: &mut BytesMut) {
        if let Some(session) = &self.session {
            let s = lock(session);
            for req in &s.inflight {
                self.enc
                    .publish(out, 1, req.pkid, &req.topic, &req.payload, true);
            }
        }
        self.deliver(out);
    }
}
