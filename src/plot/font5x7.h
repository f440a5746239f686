// A 5×7 bitmap font for the printable ASCII characters (32..126), drawn for dseek's charts so PNG
// output needs no font library. Each glyph is 7 rows of 5 bits, the most significant of the five
// the leftmost pixel; a character cell is 6×9 (one column and two rows of spacing). The lowercase
// letters g, p, q and y are drawn two rows lower, their tails in the spacing rows (descenders).
// Bytes outside printable ASCII draw as '?' (a UTF-8 sequence as one '?').
#pragma once

#include <cstdint>
#include <string_view>

namespace dseek::plot {

constexpr int kGlyphWidth = 5, kGlyphHeight = 7;
constexpr int kCellWidth = 6, kCellHeight = 9;

// The 7 row bitmaps of a character.
const uint8_t* glyph_rows(char c);

// Rows a glyph is drawn below the others: 2 for the descenders g, p, q, y; else 0.
int glyph_drop(char c);

// Characters a string draws as (UTF-8 continuation bytes take no cell).
int text_cells(std::string_view text);

}  // namespace dseek::plot
