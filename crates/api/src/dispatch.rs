//! Business commands arriving up a long connection: decode the body by command number,
//! call the same `Logic` operation the HTTP API calls, encode the answer.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use xinge_core::ErrorCode;
use xinge_core::auth::Authenticated;
use xinge_core::error::ApiError;
use xinge_gateway::{Authenticator, SessionCtx, Upstream};
use xinge_logic::{Caller, Logic};
use xinge_proto::cmd;

pub struct Dispatch(pub Arc<Logic>);

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid body: {e}")))
}

fn reply<T: Serialize>(v: T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "internal error"))
}

#[async_trait]
impl Upstream for Dispatch {
    async fn handle(&self, s: &SessionCtx, command: u16, body: Bytes) -> Result<Bytes, ApiError> {
        let caller = Caller {
            user: s.user,
            device: s.device.clone(),
            origin: Some(s.conn),
            token: s.token,
        };
        let l = &self.0;
        match command {
            cmd::SEND => reply(l.send(&caller, parse(&body)?).await?),
            cmd::SYNC => reply(l.sync(&caller, parse(&body)?).await?),
            cmd::READ => reply(l.mark_read(&caller, parse(&body)?).await?),
            cmd::RECALL => reply(l.recall(&caller, parse(&body)?).await?),
            cmd::TYPING => reply(l.typing(&caller, parse(&body)?).await?),
            cmd::CONVERSATIONS => reply(l.conversations(&caller).await?),
            cmd::HISTORY => reply(l.history(&caller, parse(&body)?).await?),
            cmd::READ_STATE => reply(l.read_state(&caller, parse(&body)?).await?),
            cmd::PRESENCE => reply(l.presence(&caller, parse(&body)?).await?),
            cmd::APP_STATE => {
                let state: xinge_proto::api::AppState = parse(&body)?;
                reply(l.set_app_state(&caller, state.background).await?)
            }
            other => Err(ApiError::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {other}"),
            )),
        }
    }
}

#[async_trait]
impl Authenticator for Dispatch {
    async fn authenticate(&self, token: &str) -> Result<Authenticated, ApiError> {
        Ok(self.0.authenticate(token).await?)
    }
}
