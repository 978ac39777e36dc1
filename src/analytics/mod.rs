//! Engagement analytics for video apps (issue 16, docs/analytics.md): the
//! counting rules over the store's live events, kept incrementally from the
//! events the store adds and removes.

mod active;
mod lists;
mod live;
mod snapshot;
mod state;
mod video;

/// A hash map with foldhash, seeded per process: the analytics' maps are
/// keyed by ids, pubkeys and addresses, where SipHash cost more than the
/// rest of a look-up.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use active::DAY;
pub use lists::{CreatorFigures, PAGE_BUDGET, Place, Sort, TagFigures, is_short};
pub use live::{Change, LiveAnalytics, counts_for_videos};
pub use state::{ANALYTICS_DIR, AnalyticsGuard, StoreAnalytics};
pub(crate) use state::{GroupChange, check_checkpoint, remove_files};
pub use video::{
    Figures, VIDEO_KINDS, VideoFields, VideoKey, hashtags, tag_value, tag_values, trend_key,
    trending_score, video_fields, video_key,
};
