//! `hosts`: every host of the daemon's job board, read from the board (not from this daemon's
//! memory), so that it shows what every other host sees too.

use super::Reply;
use crate::board::Board;
use shared::protocol::client::{ClientReply, ErrorCode};

pub async fn handle(board: Option<&Board>) -> Reply {
    let Some(board) = board else {
        return Err((
            ErrorCode::NoBoard,
            "this daemon has no job board: start it with `supervisor daemon --board URL` to share hosts and jobs".into(),
        ));
    };
    match board.hosts().await {
        Ok(hosts) => Ok(ClientReply::Hosts(hosts)),
        Err(err) => {
            let message = format!("{:#}", anyhow::Error::from(err));
            tracing::warn!(error = %message, "cannot list the hosts");
            Err((ErrorCode::Internal, message))
        }
    }
}
