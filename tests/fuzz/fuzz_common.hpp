// Shared checks for the libFuzzer targets in tests/fuzz (header only, no state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

namespace fuzz {

// Reports a broken invariant with the offending text (escaped, cut at 300 bytes) and aborts,
// so libFuzzer saves the input as a crash.
[[noreturn]] inline void fail(const char* what, std::string_view text = {}) {
    std::string shown;
    for (std::size_t i = 0; i < text.size() && i < 300; ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c < 0x7f) {
            shown += static_cast<char>(c);
        } else {
            char b[8];
            std::snprintf(b, sizeof b, "<%02x>", c);
            shown += b;
        }
    }
    std::fprintf(stderr, "\n*** invariant violated: %s\n*** text (%zu bytes): %s\n", what, text.size(),
                 shown.c_str());
    std::abort();
}

// Printable ASCII only (0x20..0x7e): what the decoder promises for every string it makes.
inline void check_printable(std::string_view s, const char* what) {
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c >= 0x7f) fail(what, s);
    }
}

// Valid UTF-8 (no overlongs, surrogates or values above U+10FFFF), no NUL, no C0 controls
// and no DEL: what a PostgreSQL text column takes and what the COPY encoder promises.
inline bool valid_text(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) return false;
            ++i;
            continue;
        }
        std::size_t n;
        std::uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; }
        else return false;
        if (i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (b & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff) return false;
        if (cp >= 0xd800 && cp <= 0xdfff) return false;
        i += n;
    }
    return true;
}

// Strict RFC 8259 parser (no output): true when `s` is exactly one JSON value.
class JsonChecker {
public:
    explicit JsonChecker(std::string_view s) : s_(s) {}
    bool valid() {
        ws();
        if (!value(0)) return false;
        ws();
        return i_ == s_.size();
    }

private:
    bool value(int depth) {
        if (depth > 64 || i_ >= s_.size()) return false;
        switch (s_[i_]) {
        case '{': return object(depth);
        case '[': return array(depth);
        case '"': return string();
        case 't': return literal("true");
        case 'f': return literal("false");
        case 'n': return literal("null");
        default: return number();
        }
    }
    bool object(int depth) {
        ++i_;
        ws();
        if (peek('}')) return ++i_, true;
        for (;;) {
            ws();
            if (!peek('"') || !string()) return false;
            ws();
            if (!peek(':')) return false;
            ++i_;
            ws();
            if (!value(depth + 1)) return false;
            ws();
            if (peek('}')) return ++i_, true;
            if (!peek(',')) return false;
            ++i_;
        }
    }
    bool array(int depth) {
        ++i_;
        ws();
        if (peek(']')) return ++i_, true;
        for (;;) {
            ws();
            if (!value(depth + 1)) return false;
            ws();
            if (peek(']')) return ++i_, true;
            if (!peek(',')) return false;
            ++i_;
        }
    }
    bool string() {
        ++i_;
        const std::size_t start = i_;
        while (i_ < s_.size()) {
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') {
                ++i_;
                return valid_utf8(s_.substr(start, i_ - 1 - start));
            }
            if (c < 0x20) return false;  // raw control character inside a string
            if (c == '\\') {
                if (++i_ >= s_.size()) return false;
                const char e = s_[i_];
                if (e == 'u') {
                    for (int k = 0; k < 4; ++k)
                        if (++i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) return false;
                } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
                    return false;
                }
            }
            ++i_;
        }
        return false;  // unterminated
    }
    static bool valid_utf8(std::string_view s) {
        // valid_text minus the control-character rule (JSON strings here have none raw).
        for (const char ch : s)
            if (static_cast<unsigned char>(ch) >= 0x80) return valid_text(s);
        return true;
    }
    bool number() {
        const std::size_t start = i_;
        if (peek('-')) ++i_;
        if (peek('0')) {
            ++i_;
        } else if (digits() == 0) {
            return false;
        }
        if (peek('.')) {
            ++i_;
            if (digits() == 0) return false;
        }
        if (peek('e') || peek('E')) {
            ++i_;
            if (peek('+') || peek('-')) ++i_;
            if (digits() == 0) return false;
        }
        return i_ > start;
    }
    std::size_t digits() {
        std::size_t n = 0;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_, ++n;
        return n;
    }
    bool literal(std::string_view l) {
        if (s_.substr(i_, l.size()) != l) return false;
        i_ += l.size();
        return true;
    }
    bool peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    std::string_view s_;
    std::size_t i_ = 0;
};

// Well-formed JSON, and (as every JSON writer here promises) plain ASCII without raw
// control characters.
inline void check_json(std::string_view json, const char* what) {
    for (const char ch : json) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c >= 0x7f) fail(what, json);
    }
    if (!JsonChecker(json).valid()) fail(what, json);
}

// Well-formed JSON in valid UTF-8 (non-ASCII allowed, no raw control characters) that
// PostgreSQL's jsonb accepts: it refuses the escape \u0000.
inline void check_jsonb(std::string_view json, const char* what) {
    if (!valid_text(json) || !JsonChecker(json).valid()) fail(what, json);
    for (std::size_t i = 0; i + 1 < json.size(); ++i) {
        if (json[i] != '\\') continue;
        if (json.substr(i + 1, 5) == "u0000") fail(what, json);
        ++i;  // skip the escaped character
    }
}

}  // namespace fuzz
