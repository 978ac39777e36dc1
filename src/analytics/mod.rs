//! Engagement analytics for video apps (issue 16, docs/analytics.md): the
//! counting rules over the store's live events, kept incrementally from the
//! events the store adds and removes.

mod live;
mod video;

pub use live::{Change, LiveAnalytics, trend_key};
pub use video::{
    Figures, VIDEO_KINDS, VideoFields, VideoKey, tag_value, tag_values, trending_score,
    video_fields, video_key,
};
