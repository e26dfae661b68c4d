/*
 * wal_crc: verifies the CRC-32C (xl_crc) and the header chain of many complete PostgreSQL WAL records in one call.
 *
 * Why native: the WAL writer checks every record, and records are a few hundred bytes, so a call per record
 * into a CRC package costs more than the CRC itself (~100 ns of call overhead plus a view per record, against
 * ~25 ns of SSE 4.2 work). The JS decoder parses and checks every page header and every record that is cut
 * by a page or buffer end; it hands this module the runs of records that lie whole inside one page
 * (walkRecords), or the offsets of such records, a batch at a time (verifyRecords, when it runs without the
 * walk, e.g. with a per-record callback).
 *
 * A record at offset h with total length t = xl_tot_len (little-endian u32 at h) is good when
 * CRC-32C(record[24, t) ++ record[0, 20)) equals the u32 at h + 20, as PostgreSQL computes it.
 *
 * verifyRecords(data: Uint8Array, starts: Int32Array, count: number) -> number
 *   the index of the first record whose CRC differs, or -1 when all `count` match. Throws RangeError when
 *   a record does not lie inside `data` (the caller's bug; nothing is read outside the buffer).
 * walkRecords(data: Uint8Array, io: Uint32Array) -> number
 *   walks the run of good records in data[io[0], io[1]) that starts at io[0] (a record start): each record
 *   whole in the range, xl_tot_len >= 24, xl_prev = the LSN of the record before, not an XLOG_SWITCH, CRC
 *   right; the next one starts at the 8-aligned end of the one before. io[2], io[3] are the high and low
 *   halves of the LSN of data[io[0]] (the range must not cross a 4 GiB LSN boundary; a WAL page never does);
 *   io[4] != 0 when the record before the first is known, io[5], io[6] the halves of its LSN. Stops before
 *   the first record that is not whole or fails a check, and after a record whose padding leaves the range.
 *   Returns the number of records walked; when > 0, io[7] is the offset in data of the last one's start
 *   and io[8] of its end (without padding). It only walks good records: whoever continues at the stop
 *   decides what is wrong there and says so. Throws RangeError when io is shorter than 9 or the range does
 *   not lie inside data.
 *   Why: for WAL of a few hundred bytes per record, walking the headers in JS (length, xl_prev, padding,
 *   page bounds) cost more than the CRC itself; here it is one call per page.
 * hardware: boolean, whether this CPU has the SSE 4.2 crc32 instruction; without it both functions throw
 *   and the caller keeps its per-record path.
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define RECORD_HEADER_BYTES 24
#define RECORD_CRC_OFFSET 20
#define RECORD_PREV_OFFSET 8
#define RECORD_INFO_OFFSET 16
#define RECORD_RMID_OFFSET 17
#define RM_XLOG_ID 0
#define XLR_INFO_MASK 0x0F
#define XLOG_SWITCH 0x40
#define WALK_IO_LENGTH 9

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_SSE42_BUILD 1

__attribute__((target("sse4.2"))) static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t word;
    memcpy(&word, p, 8);
    crc = (uint32_t)_mm_crc32_u64(crc, word);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    crc = _mm_crc32_u8(crc, *p);
    p++;
    n--;
  }
  return crc;
}

static bool hardware_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#else
#define HAVE_SSE42_BUILD 0
static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) {
  (void)p;
  (void)n;
  return crc;
}
static bool hardware_supported(void) { return false; }
#endif

static bool g_hardware = false;

static uint32_t read_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The record of `total` bytes at `record` has the CRC in its header: crc32c(body ++ header[0, 20)). */
static bool record_crc_matches(const uint8_t *record, uint32_t total) {
  uint32_t crc = crc32c_update(0xFFFFFFFFu, record + RECORD_HEADER_BYTES, total - RECORD_HEADER_BYTES);
  crc = crc32c_update(crc, record, RECORD_CRC_OFFSET) ^ 0xFFFFFFFFu;
  return crc == read_u32le(record + RECORD_CRC_OFFSET);
}

static napi_value throw_error(napi_env env, bool range, const char *message) {
  if (range) napi_throw_range_error(env, NULL, message);
  else napi_throw_type_error(env, NULL, message);
  return NULL;
}

static bool get_typedarray(napi_env env, napi_value value, napi_typedarray_type expected, size_t *length, void **data) {
  bool is_typedarray = false;
  napi_typedarray_type type;
  return napi_is_typedarray(env, value, &is_typedarray) == napi_ok && is_typedarray &&
         napi_get_typedarray_info(env, value, &type, length, data, NULL, NULL) == napi_ok && type == expected;
}

static napi_value verify_records(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, false, "verifyRecords(data, starts, count)");
  if (!g_hardware) return throw_error(env, false, "verifyRecords: this CPU has no SSE 4.2 crc32 instruction");

  size_t data_length;
  void *data_raw;
  if (!get_typedarray(env, argv[0], napi_uint8_array, &data_length, &data_raw)) return throw_error(env, false, "verifyRecords: data must be a Uint8Array");
  size_t starts_length;
  void *starts_raw;
  if (!get_typedarray(env, argv[1], napi_int32_array, &starts_length, &starts_raw)) return throw_error(env, false, "verifyRecords: starts must be an Int32Array");
  uint32_t count;
  if (napi_get_value_uint32(env, argv[2], &count) != napi_ok) return throw_error(env, false, "verifyRecords: count must be a number");
  if (count > starts_length) return throw_error(env, true, "verifyRecords: count exceeds starts");

  const uint8_t *data = (const uint8_t *)data_raw;
  const int32_t *starts = (const int32_t *)starts_raw;
  int64_t failed = -1;
  for (uint32_t i = 0; i < count; i++) {
    int64_t start = starts[i];
    if (start < 0 || (uint64_t)start + RECORD_HEADER_BYTES > data_length) return throw_error(env, true, "verifyRecords: a record header lies outside data");
    const uint8_t *record = data + start;
    uint32_t total = read_u32le(record);
    if (total < RECORD_HEADER_BYTES || (uint64_t)start + total > data_length) return throw_error(env, true, "verifyRecords: a record lies outside data");
    if (!record_crc_matches(record, total)) {
      failed = i;
      break;
    }
  }
  napi_value result;
  napi_create_int64(env, failed, &result);
  return result;
}

static napi_value walk_records(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) return throw_error(env, false, "walkRecords(data, io)");
  if (!g_hardware) return throw_error(env, false, "walkRecords: this CPU has no SSE 4.2 crc32 instruction");
  size_t data_length;
  void *data_raw;
  if (!get_typedarray(env, argv[0], napi_uint8_array, &data_length, &data_raw)) return throw_error(env, false, "walkRecords: data must be a Uint8Array");
  size_t io_length;
  void *io_raw;
  if (!get_typedarray(env, argv[1], napi_uint32_array, &io_length, &io_raw)) return throw_error(env, false, "walkRecords: io must be a Uint32Array");
  if (io_length < WALK_IO_LENGTH) return throw_error(env, true, "walkRecords: io holds fewer than 9 numbers");

  uint32_t *io = (uint32_t *)io_raw;
  const uint32_t from = io[0];
  const uint32_t to = io[1];
  if (from > to || to > data_length) return throw_error(env, true, "walkRecords: the range does not lie inside data");
  const uint8_t *data = (const uint8_t *)data_raw;
  const uint32_t lsn_hi = io[2];
  const uint32_t lsn_lo = io[3];
  bool prev_known = io[4] != 0;
  uint32_t prev_hi = io[5];
  uint32_t prev_lo = io[6];
  uint32_t count = 0;
  uint32_t pos = from;
  while (to - pos >= RECORD_HEADER_BYTES) {
    const uint8_t *record = data + pos;
    const uint32_t total = read_u32le(record);
    if (total < RECORD_HEADER_BYTES || total > to - pos) break;
    const uint32_t record_lo = lsn_lo + (pos - from);
    if (prev_known && (read_u32le(record + RECORD_PREV_OFFSET) != prev_lo || read_u32le(record + RECORD_PREV_OFFSET + 4) != prev_hi)) break;
    if (record[RECORD_RMID_OFFSET] == RM_XLOG_ID && (record[RECORD_INFO_OFFSET] & ~XLR_INFO_MASK) == XLOG_SWITCH) break;
    if (!record_crc_matches(record, total)) break;
    count++;
    io[7] = pos;
    io[8] = pos + total;
    prev_known = true;
    prev_hi = lsn_hi;
    prev_lo = record_lo;
    /* Unsigned wrap-around is exact here: only the low 3 bits of the end LSN matter. */
    const uint32_t padding = (8u - ((record_lo + total) & 7u)) & 7u;
    if (padding > to - (pos + total)) break;
    pos += total + padding;
  }
  napi_value result;
  napi_create_uint32(env, count, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  g_hardware = HAVE_SSE42_BUILD && hardware_supported();
  napi_value fn;
  napi_value walk;
  napi_value hardware;
  if (napi_create_function(env, "verifyRecords", NAPI_AUTO_LENGTH, verify_records, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "verifyRecords", fn) != napi_ok ||
      napi_create_function(env, "walkRecords", NAPI_AUTO_LENGTH, walk_records, NULL, &walk) != napi_ok ||
      napi_set_named_property(env, exports, "walkRecords", walk) != napi_ok ||
      napi_get_boolean(env, g_hardware, &hardware) != napi_ok ||
      napi_set_named_property(env, exports, "hardware", hardware) != napi_ok) {
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
