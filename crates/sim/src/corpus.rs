//! A synthetic, seeded corpus of one-to-one chat messages, for training and
//! measuring the zstd dictionary of message bodies (`crates/wire/dict/`).
//!
//! # What it is
//!
//! There is no real chat log in this repository (and none may be fetched), so
//! the corpus is generated. [`chat_messages`] draws each message from one of
//! these shapes, with these weights:
//!
//! | share | shape | example |
//! |---|---|---|
//! | 24% | a short reply from a list of ~100 ("ok", "lol", "sounds good") | `np` |
//! | 44% | one sentence from ~150 templates: greetings, questions, plans, times and dates, status, links, numbers | `are we still on for 7:30 at the station?` |
//! | 20% | two or three such sentences | `hey sam! running 10 min late, sorry` |
//! | 12% | a long message: 3–9 sentences, some of them free text | a paragraph of 200–500 chars |
//!
//! Templates are filled from word lists (about 80 names, 60 places, 40 foods, 50
//! things, 40 activities, days, times, dates, prices, phone-like numbers, URLs under
//! `https://example.org/` and other `example.*` hosts, ~50 emoji). Free text is 4–16
//! words drawn from a list of ~240 common English words with Zipf-like weights (word
//! `i` has weight `1 / (i + 2)`). Messages are then "typed": sometimes all lower case,
//! sometimes without final punctuation, sometimes with "!!", "..." or an emoji
//! appended, and cut at [`MAX_MESSAGE_BYTES`]. The result has the length profile of
//! chat: about two thirds of messages are 10–80 bytes, a quarter are under 15, the
//! median is near 30 and one in ten is over 120, with a tail to ~450 bytes
//! (`train-dict` prints the percentiles it sees).
//!
//! # What it is not
//!
//! It is English only, has no typos, no quoting or replies, no code or
//! non-Latin scripts, and its templates repeat exactly, which real people do not.
//! A dictionary trained on it therefore measures better on this corpus than it
//! will on real traffic; the figures `train-dict` prints are an upper bound of
//! the gain, not a prediction.
//!
//! # Training and testing sets
//!
//! A seed fixes the whole sequence (ChaCha8, so it is the same on every
//! platform; a new major version of `rand` may change how values are drawn from
//! it, which is why the trained dictionary is a checked-in file, not rebuilt).
//! The dictionary is trained only on seeds in [`TRAINING_SEEDS`] and measured
//! only on seeds in [`HELD_OUT_SEEDS`]; the two ranges do not overlap, so the
//! measured messages are drawn independently of the training ones (the word
//! lists and templates are shared, as a language is, and a short reply such as
//! "ok" of course occurs in both).

use std::ops::Range;

use rand::distributions::{Distribution, WeightedIndex};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeds whose messages a dictionary may be trained on.
pub const TRAINING_SEEDS: Range<u64> = 0..1_000_000;

/// Seeds whose messages a dictionary is measured on; disjoint from
/// [`TRAINING_SEEDS`].
pub const HELD_OUT_SEEDS: Range<u64> = 1_000_000..2_000_000;

// The two seed ranges never overlap.
const _: () = assert!(TRAINING_SEEDS.end <= HELD_OUT_SEEDS.start);

/// Longest message the generator makes, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 500;

/// `n` chat messages generated from `seed`; the same seed always gives the
/// same messages.
pub fn chat_messages(seed: u64, n: usize) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words = WeightedIndex::new((0..WORDS.len()).map(|i| 1.0 / (i as f64 + 2.0)))
        .unwrap_or_else(|_| unreachable!("WORDS is not empty and the weights are positive"));
    let shapes = WeightedIndex::new([24, 44, 20, 12])
        .unwrap_or_else(|_| unreachable!("the shape weights are positive"));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let message = match shapes.sample(&mut rng) {
            0 => short_reply(&mut rng),
            1 => sentence(&mut rng),
            2 => {
                let count = rng.gen_range(2..=3);
                join_sentences(&mut rng, &words, count, 0.0)
            }
            _ => {
                let count = rng.gen_range(3..=9);
                join_sentences(&mut rng, &words, count, 0.35)
            }
        };
        out.push(truncate(typed(&mut rng, message), MAX_MESSAGE_BYTES));
    }
    out
}

/// `len` uniformly random bytes from `seed`: a body no compressor can shrink
/// (an image, an already compressed file).
pub fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

fn short_reply(rng: &mut ChaCha8Rng) -> String {
    let mut s = pick(rng, SHORT_REPLIES).to_string();
    if rng.gen_bool(0.12) {
        s.push(' ');
        s.push_str(pick(rng, EMOJI));
    }
    s
}

fn sentence(rng: &mut ChaCha8Rng) -> String {
    let template = pick(rng, TEMPLATES);
    fill(rng, template)
}

fn free_text(rng: &mut ChaCha8Rng, words: &WeightedIndex<f64>) -> String {
    let count = rng.gen_range(4..=16);
    let mut s = String::new();
    for i in 0..count {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[words.sample(rng)]);
    }
    s.push_str(pick(rng, &[".", ".", ".", "?", "!", ""]));
    capitalize(&s)
}

fn join_sentences(
    rng: &mut ChaCha8Rng,
    words: &WeightedIndex<f64>,
    count: usize,
    free_share: f64,
) -> String {
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        parts.push(if rng.gen_bool(free_share) {
            free_text(rng, words)
        } else {
            sentence(rng)
        });
    }
    parts.join(pick(rng, &[" ", " ", " ", ". ", ", ", "\n"]))
}

/// Replaces each `{slot}` of `template` with a word of that slot's list.
fn fill(rng: &mut ChaCha8Rng, template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let slot = &rest[open + 1..open + close];
        out.push_str(&slot_value(rng, slot));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn slot_value(rng: &mut ChaCha8Rng, slot: &str) -> String {
    match slot {
        "name" => pick(rng, NAMES).to_string(),
        "place" => pick(rng, PLACES).to_string(),
        "food" => pick(rng, FOODS).to_string(),
        "thing" => pick(rng, THINGS).to_string(),
        "activity" => pick(rng, ACTIVITIES).to_string(),
        "day" => pick(rng, DAYS).to_string(),
        "when" => pick(rng, WHEN).to_string(),
        "feeling" => pick(rng, FEELINGS).to_string(),
        "emoji" => pick(rng, EMOJI).to_string(),
        "time" => {
            if rng.gen_bool(0.6) {
                let minute = pick(rng, &[0, 0, 15, 30, 30, 45, 10, 20, 40, 50]);
                format!("{}:{minute:02}", rng.gen_range(1..=12))
            } else {
                format!(
                    "{}{}",
                    rng.gen_range(1..=12),
                    pick(rng, &["pm", "am", "pm", ""])
                )
            }
        }
        "date" => {
            let month = pick(rng, MONTHS);
            match rng.gen_range(0..3) {
                0 => format!("{month} {}", rng.gen_range(1..=28)),
                1 => format!("{}/{}", rng.gen_range(1..=12), rng.gen_range(1..=28)),
                _ => format!(
                    "2025-{:02}-{:02}",
                    rng.gen_range(1..=12),
                    rng.gen_range(1..=28)
                ),
            }
        }
        "minutes" => pick(rng, &["5", "10", "15", "20", "30", "45"]).to_string(),
        "number" => match rng.gen_range(0..4) {
            0 => rng.gen_range(2..=12).to_string(),
            1 => rng.gen_range(10..=100).to_string(),
            2 => rng.gen_range(100..=2000).to_string(),
            _ => rng.gen_range(1..=5).to_string(),
        },
        "price" => {
            let amount = rng.gen_range(3..=250);
            match rng.gen_range(0..3) {
                0 => format!("${amount}"),
                1 => format!("{amount} euros"),
                _ => format!("${amount}.{:02}", rng.gen_range(0..100)),
            }
        }
        "phone" => format!(
            "+1 {} {:03} {:04}",
            rng.gen_range(200..999),
            rng.gen_range(0..1000),
            rng.gen_range(0..10_000)
        ),
        "url" => url(rng),
        _ => String::new(),
    }
}

fn url(rng: &mut ChaCha8Rng) -> String {
    let host = pick(rng, URL_HOSTS);
    let section = pick(rng, URL_SECTIONS);
    match rng.gen_range(0..4) {
        0 => format!("https://{host}/{section}/{}", rng.gen_range(1000..999_999)),
        1 => {
            let slug: Vec<&str> = (0..rng.gen_range(2..=5))
                .map(|_| pick(rng, SLUG_WORDS))
                .collect();
            format!("https://{host}/{section}/{}", slug.join("-"))
        }
        2 => {
            let id: String = (0..11)
                .map(|_| {
                    char::from(pick(
                        rng,
                        &b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"[..],
                    ))
                })
                .collect();
            format!("https://{host}/watch?v={id}")
        }
        _ => format!("https://{host}/"),
    }
}

/// How people type in chat: often lower case, often without the final full
/// stop, sometimes with extra marks or an emoji.
fn typed(rng: &mut ChaCha8Rng, mut s: String) -> String {
    if rng.gen_bool(0.35) {
        s = s.to_lowercase();
    }
    if rng.gen_bool(0.4) && s.ends_with('.') && !s.ends_with("..") {
        s.pop();
    }
    match rng.gen_range(0..20) {
        0 => s.push_str("!!"),
        1 => s.push_str("..."),
        2 | 3 => {
            s.push(' ');
            s.push_str(pick(rng, EMOJI));
        }
        _ => {}
    }
    s
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    *items
        .choose(rng)
        .unwrap_or_else(|| unreachable!("every list is non-empty"))
}

// ---- word lists -----------------------------------------------------------

#[rustfmt::skip]
const SHORT_REPLIES: &[&str] = &[
    "ok", "ok", "okay", "k", "kk", "lol", "lol", "haha", "hahaha", "lmao", "yes", "yes!", "yeah",
    "yep", "yup", "no", "nope", "nah", "sure", "sure!", "thanks", "thanks!", "thank you!", "thx",
    "ty", "np", "no problem", "no worries", "sounds good", "sounds good!", "sounds great",
    "perfect", "great", "cool", "nice", "nice!", "awesome", "amazing", "omg", "wow", "wait what",
    "what?", "why?", "really?", "seriously?", "same", "me too", "agreed", "true", "exactly",
    "right", "fair enough", "good idea", "good morning", "good night", "gm", "gn", "night!",
    "morning!", "hi", "hey", "hey!", "hello", "yo", "sup", "brb", "omw", "on my way",
    "almost there", "here", "i'm here", "see you soon", "see you", "cya", "bye", "later", "ttyl",
    "miss you", "love you", "congrats!!", "happy birthday!", "sorry", "my bad", "idk", "not sure",
    "maybe", "hmm", "i guess", "done", "got it", "on it", "will do", "let me check", "one sec",
    "👍", "😂", "❤️", "🙏", "🎉", "😅", "ok 👍", "lol 😂", "yes 🙌", "thanks ❤️",
];

const TEMPLATES: &[&str] = &[
    // greetings
    "hey {name}!",
    "hi {name}, how are you?",
    "hey, how's it going?",
    "good morning {emoji}",
    "morning! did you sleep well?",
    "hey {name}, long time no see",
    "hello! are you around?",
    "hi! how was your {day}?",
    "hey, hope you're doing well",
    "good night, talk tomorrow",
    "hey {name}, got a minute?",
    "yo {name} what's up",
    "hi {name}! happy {day} {emoji}",
    // questions
    "are you free {when}?",
    "are we still on for {time}?",
    "are we still on for {when} at {place}?",
    "what time is the {activity}?",
    "what time should we meet?",
    "where are you?",
    "where should we meet?",
    "did you see the {thing}?",
    "did you get my message?",
    "did you book the {thing}?",
    "did {name} reply?",
    "can you call me when you're free?",
    "can you pick up some {food} on the way?",
    "can you send me the {thing}?",
    "can you send me the address?",
    "do you want to get {food} {when}?",
    "do you know if {name} is coming?",
    "do we need to bring anything?",
    "how much was the {thing}?",
    "how was the {activity}?",
    "how long will it take?",
    "how many people are coming?",
    "what do you think about {place}?",
    "what are you doing {when}?",
    "what's the plan for {when}?",
    "is {name} coming to {place}?",
    "is it ok if I bring {name}?",
    "have you been to {place} before?",
    "any news from {name}?",
    "anyone up for {activity} {when}?",
    "who's driving?",
    "which {thing} do you mean?",
    "should I book a table at {place}?",
    "want me to pick you up?",
    "you coming {when}?",
    // plans
    "let's meet at {place} at {time}",
    "let's do {activity} {when}",
    "let's get {food} {when}, my treat",
    "meet you at {place} in {minutes} minutes",
    "I'll be at {place} around {time}",
    "I'll call you {when}",
    "I'll bring the {thing}",
    "I'll send you the details later",
    "I can do {time} on {day}",
    "I booked a table for {number} at {time}",
    "we're at {place}, come join us",
    "we should go to {place} {when}",
    "we're thinking {activity} on {day}, you in?",
    "how about {day} at {time}?",
    "how about {place} instead?",
    "can we move it to {time}?",
    "can we do {day} instead?",
    "dinner at {place} on {day}?",
    "{activity} {when}? {emoji}",
    "party at {name}'s place on {day} at {time}",
    "the {activity} starts at {time}",
    "the train leaves at {time}",
    "my flight lands at {time} on {date}",
    "the meeting is on {date} at {time}",
    "don't forget the {thing} {when}",
    "reminder: {activity} on {day} at {time}",
    "save the date: {date}",
    // status
    "running {minutes} minutes late, sorry",
    "just got home",
    "just left, be there in {minutes}",
    "stuck in traffic {emoji}",
    "on the train now",
    "at {place} now",
    "almost at {place}",
    "I'm so {feeling} today",
    "feeling {feeling} after {activity}",
    "just finished {activity}",
    "still at work, will text you later",
    "can't talk right now, in a meeting",
    "I'm outside",
    "I'm here, where are you?",
    "sorry I missed your call",
    "sorry, I fell asleep",
    "my phone is almost dead",
    "I forgot my {thing} at {place}",
    "I lost my {thing} again {emoji}",
    "{name} says hi",
    "{name} is here too",
    "{name} can't make it {when}",
    "the {thing} is broken again",
    "the {food} at {place} was {feeling}",
    "I just had the best {food} at {place}",
    "got the {thing}!",
    "finally done with {activity}",
    "this week has been crazy",
    "it's raining so hard here",
    "it's so hot today",
    "I'm starving, want {food}?",
    // opinions and reactions
    "that was so much fun {emoji}",
    "that's hilarious",
    "that's amazing, congrats!",
    "that sounds great",
    "that makes sense",
    "I think {place} is better",
    "I love {food}",
    "I'm not a fan of {food}",
    "honestly I don't mind",
    "no rush, whenever you can",
    "thanks so much for {when}, it was great",
    "thanks for the {thing}!",
    "thank you for dinner {emoji}",
    "happy birthday {name}!! {emoji}",
    "congrats on the new job!",
    "good luck {when}!",
    "feel better soon {emoji}",
    "miss you guys",
    "can't wait for {day}",
    "so excited for {activity} {when}",
    // links and numbers
    "check this out {url}",
    "look at this {url}",
    "here's the link: {url}",
    "{url}",
    "{url} lol",
    "this is the place {url}",
    "found this {url} what do you think?",
    "tickets are {price} each {url}",
    "it was {price} in total",
    "I owe you {price}",
    "you owe me {price} for the {thing}",
    "sent you {price}",
    "it's {price}, is that ok?",
    "my number is {phone}",
    "call {name} on {phone}",
    "room {number}, floor {number}",
    "the address is {number} {place} street",
    "table for {number} at {time}",
    "we need {number} more people",
    "score is {number} to {number}",
    "it takes about {minutes} minutes",
    "{number} days to go {emoji}",
    "gate {number}, boarding at {time}",
    "order number {number}",
];

#[rustfmt::skip]
const NAMES: &[&str] = &[
    "Sam", "Alex", "Max", "Emma", "Liam", "Olivia", "Noah", "Ava", "Mia", "Lucas", "Sophia",
    "Ethan", "Isabella", "Mason", "Amelia", "Logan", "Harper", "James", "Evelyn", "Ben", "Abigail",
    "Leo", "Emily", "Jack", "Ella", "Daniel", "Chloe", "Henry", "Grace", "Owen", "Lily", "Ryan",
    "Zoe", "Nathan", "Hannah", "Adam", "Nora", "David", "Sara", "Tom", "Anna", "Chris", "Kate",
    "Mike", "Julia", "Dan", "Laura", "Nick", "Rachel", "Jon", "Maria", "Paul", "Lisa", "Mark",
    "Jess", "Matt", "Amy", "Josh", "Beth", "Luke", "Ruth", "Tim", "Eva", "mom", "dad", "grandma",
    "bro", "guys", "everyone", "Priya", "Omar", "Yuki", "Carlos", "Fatima", "Ivan", "Chen",
    "Aisha", "Mateo", "Elena",
];

#[rustfmt::skip]
const PLACES: &[&str] = &[
    "the station", "the cafe", "the office", "the park", "the gym", "the mall", "the beach",
    "the airport", "the library", "the cinema", "the pub", "the bar", "the restaurant",
    "the pizza place", "the coffee shop", "the bakery", "the market", "the supermarket",
    "the museum", "the stadium", "the hospital", "the school", "the hotel", "the lobby",
    "the parking lot", "the bus stop", "the corner", "the bridge", "the lake", "the river",
    "my place", "your place", "home", "work", "downtown", "the city", "the club",
    "the sushi place", "the thai place", "the new bar", "the old bookshop", "central station",
    "main street", "the square", "the front door", "the entrance", "the second floor",
    "the conference room", "the kitchen", "the garden", "the pool", "the venue", "the studio",
    "the pharmacy", "the post office", "the bank", "the train station", "the ferry",
    "the mountains", "the countryside",
];

#[rustfmt::skip]
const FOODS: &[&str] = &[
    "pizza", "sushi", "coffee", "tea", "burgers", "tacos", "ramen", "pho", "curry", "pasta",
    "salad", "sandwiches", "bagels", "croissants", "ice cream", "cake", "cookies", "donuts",
    "beer", "wine", "cocktails", "brunch", "breakfast", "lunch", "dinner", "snacks", "dumplings",
    "noodles", "fries", "chicken", "steak", "fish and chips", "kebab", "falafel", "a smoothie",
    "bubble tea", "chocolate", "popcorn", "milk", "bread", "eggs",
];

#[rustfmt::skip]
const THINGS: &[&str] = &[
    "tickets", "keys", "charger", "laptop", "phone", "wallet", "bag", "umbrella", "jacket", "book",
    "photos", "pictures", "video", "slides", "report", "document", "file", "link", "address",
    "invoice", "receipt", "car", "bike", "train tickets", "passport", "package", "parcel",
    "present", "gift", "card", "game", "movie", "show", "new episode", "playlist", "song",
    "recipe", "menu", "table", "room", "apartment", "flat", "heater", "wifi", "printer", "fridge",
    "washing machine", "email", "calendar invite", "schedule",
];

#[rustfmt::skip]
const ACTIVITIES: &[&str] = &[
    "dinner", "lunch", "drinks", "coffee", "the movie", "the concert", "the game", "the match",
    "football", "basketball", "tennis", "a run", "yoga", "the gym", "swimming", "hiking", "a walk",
    "shopping", "the party", "the meeting", "the interview", "the exam", "class", "practice",
    "rehearsal", "the trip", "the wedding", "the barbecue", "brunch", "karaoke", "board games",
    "game night", "movie night", "the show", "the festival", "the flight", "work", "homework",
    "cleaning", "cooking",
];

#[rustfmt::skip]
const DAYS: &[&str] = &[
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "weekend",
    "Friday night", "Saturday morning", "Sunday afternoon",
];

#[rustfmt::skip]
const WHEN: &[&str] = &[
    "today", "tonight", "tomorrow", "tomorrow night", "tomorrow morning", "this weekend",
    "next week", "this afternoon", "this evening", "later", "right now", "on Friday",
    "on Saturday", "on Sunday", "next Monday", "after work", "after lunch", "this week",
    "next month", "soon",
];

#[rustfmt::skip]
const FEELINGS: &[&str] = &[
    "tired", "happy", "excited", "exhausted", "hungry", "bored", "stressed", "great", "amazing",
    "awful", "sick", "sleepy", "good", "fine", "busy", "nervous", "relieved", "so good",
    "not great", "delicious",
];

#[rustfmt::skip]
const MONTHS: &[&str] = &[
    "Jan", "Feb", "March", "April", "May", "June", "July", "Aug", "Sept", "Oct", "Nov", "Dec",
];

#[rustfmt::skip]
const EMOJI: &[&str] = &[
    "😂", "🤣", "😊", "😍", "😘", "😅", "😭", "😎", "🙂", "😉", "🙃", "😴", "🤔", "😬", "🥳", "🥲", "😢", "😡", "🙄",
    "😱", "👍", "👌", "🙏", "👏", "🙌", "💪", "👀", "❤️", "💕", "🔥", "✨", "🎉", "🎂", "🍕", "🍺", "☕", "🍣", "🌮",
    "🚗", "✈️", "🏃", "⚽", "🎶", "📸", "💯", "✅", "❌", "⏰", ":)", ":D", ";)", ":(", "xD", "<3",
];

#[rustfmt::skip]
const URL_HOSTS: &[&str] = &[
    "example.org", "example.com", "www.example.org", "news.example.com", "shop.example.net",
    "maps.example.com", "video.example.org", "docs.example.com", "tickets.example.net",
    "photos.example.org",
];

#[rustfmt::skip]
const URL_SECTIONS: &[&str] = &[
    "articles", "news", "p", "item", "products", "events", "watch", "album", "d", "s", "recipes",
    "places", "share", "2025/06",
];

#[rustfmt::skip]
const SLUG_WORDS: &[&str] = &[
    "best", "new", "city", "guide", "summer", "winter", "cheap", "flights", "top", "10", "recipes",
    "easy", "pasta", "concert", "tickets", "review", "how", "to", "make", "local", "news",
    "weekend", "plans", "travel", "tips", "open", "air", "festival", "2025",
];

/// Common English words, most frequent first (the order gives the Zipf weights).
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "I", "to", "and", "a", "you", "it", "is", "that", "of", "in", "we", "for", "this", "so",
    "have", "be", "was", "my", "on", "just", "but", "not", "with", "are", "me", "do", "at", "what",
    "can", "all", "if", "like", "know", "think", "get", "they", "good", "go", "it's", "I'm",
    "don't", "there", "about", "now", "one", "time", "will", "really", "out", "up", "your", "then",
    "he", "she", "yeah", "when", "how", "too", "some", "would", "been", "going", "want", "had",
    "see", "also", "still", "back", "people", "more", "from", "or", "no", "here", "day", "were",
    "them", "got", "did", "well", "make", "because", "right", "an", "much", "could", "should",
    "thing", "week", "need", "today", "things", "way", "pretty", "tomorrow", "can't", "first",
    "last", "night", "again", "little", "love", "work", "better", "maybe", "even", "new", "after",
    "something", "over", "great", "sure", "only", "come", "said", "any", "other", "never", "home",
    "off", "take", "very", "feel", "lot", "everyone", "always", "before", "didn't", "nice", "look",
    "actually", "let", "two", "long", "am", "next", "year", "say", "fun", "wait", "tonight", "by",
    "where", "probably", "place", "these", "guess", "mean", "who", "happy", "which", "friends",
    "why", "bit", "bad", "though", "late", "morning", "hope", "kind", "best", "weekend", "thanks",
    "around", "into", "idea", "try", "old", "real", "same", "done", "hard", "keep", "went", "tell",
    "call", "trying", "find", "big", "us", "him", "her", "thought", "money", "anyway", "almost",
    "already", "minutes", "hours", "early", "next", "car", "food", "house", "family", "stuff",
    "funny", "weird", "crazy", "busy", "tired", "game", "phone", "picture", "movie", "music",
    "party", "dinner", "class", "job", "boss", "city", "trip", "weather", "rain", "sun", "dog",
    "cat", "kids", "school", "coffee", "plan", "plans", "help", "talk", "meet", "leave", "start",
    "stop", "open", "close", "buy", "pay", "send", "read", "watch", "play", "eat", "drink",
    "sleep", "walk", "drive",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_bounded() {
        let a = chat_messages(7, 500);
        assert_eq!(a, chat_messages(7, 500));
        assert_ne!(a, chat_messages(8, 500));
        assert_eq!(a.len(), 500);
        assert!(a
            .iter()
            .all(|m| !m.is_empty() && m.len() <= MAX_MESSAGE_BYTES));
        assert!(a.iter().all(|m| !m.contains('{')), "an unfilled slot");
    }

    #[test]
    fn lengths_look_like_chat() {
        let mut lens: Vec<usize> = chat_messages(1, 5_000).iter().map(String::len).collect();
        lens.sort_unstable();
        let short = lens.iter().filter(|l| (10..=80).contains(*l)).count();
        assert!(short * 100 / lens.len() >= 55, "{short} of 5000 in 10..=80");
        assert!(lens[lens.len() / 2] < 60, "median {}", lens[lens.len() / 2]);
        assert!(
            lens[lens.len() - 1] > 300,
            "longest {}",
            lens[lens.len() - 1]
        );
    }

    #[test]
    fn incompressible_is_seeded() {
        assert_eq!(incompressible(1, 64), incompressible(1, 64));
        assert_ne!(incompressible(1, 64), incompressible(2, 64));
        assert_eq!(incompressible(3, 1000).len(), 1000);
    }
}
