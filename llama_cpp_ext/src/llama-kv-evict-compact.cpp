// COMPACT mode of the per-(layer, KV head) eviction: the kept entries of a sequence move into per-layer pools of
// that sequence where each KV head owns one contiguous region sized for its own budget plus a headroom for new
// tokens; attention runs one op per KV head on views of its region. Several sequences per context: each has its
// own pools; the tokens of a ubatch that belong to compacted sequences are gathered per sequence, attended in
// their pools, and scattered back among the outputs of the usual attention for the other tokens.
// Design: docs/per-head-eviction.md (audiokv-edge), section 4.

#include "llama-kv-evict-state.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-kv-cache.h"

#include "ggml-alloc.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(_WIN32)
#    ifndef NOMINMAX
#        define NOMINMAX
#    endif
#    define WIN32_LEAN_AND_MEAN
#    include <windows.h>
#else
#    include <sys/mman.h>
#    include <unistd.h>
#    if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#        define MAP_ANONYMOUS MAP_ANON // older Darwin and BSD headers, or strict POSIX feature macros on Darwin
#    endif
#endif

size_t llama_kv_evict_state::pool_pages::page_size() {
    static const size_t page = [] {
#if defined(_WIN32)
        SYSTEM_INFO si;
        GetSystemInfo(&si);
        const long n = (long) si.dwPageSize;
#else
        const long n = sysconf(_SC_PAGESIZE); // Darwin: 16 KiB on Apple silicon, 4 KiB on Intel
#endif
        return n > 0 ? (size_t) n : (size_t) 4096;
    }();
    return page;
}

llama_kv_evict_state::pool_pages::pool_pages(size_t bytes) {
    const size_t page = page_size();
    size = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
#if defined(_WIN32)
    ptr = VirtualAlloc(nullptr, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
#else
    ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
        ptr = nullptr;
    }
#endif
}

llama_kv_evict_state::pool_pages::~pool_pages() {
    if (ptr == nullptr) {
        return;
    }
#if defined(_WIN32)
    VirtualFree(ptr, 0, MEM_RELEASE);
#else
    munmap(ptr, size);
#endif
}

bool llama_kv_evict_state::is_seq_compact(llama_seq_id seq_id) const {
    if (seq_id < 0) {
        return is_compact();
    }
    return (uint32_t) seq_id < seqs.size() && seqs[seq_id].compacted;
}

void llama_kv_evict_state::drop_pools(llama_seq_id seq_id) {
    auto & sp = seqs[seq_id];
    if (sp.compacted) {
        n_compacted--;
    }
    sp.compacted = false;
    sp.layers.clear();
}

// a compacted sequence allows the removal of the whole sequence (its pools are dropped) and of a range holding none
// of its positions, in the main cache or in any head's pool (a no-op for it, e.g. llama-cpp-python's and
// llama-server's removal from the next position on); on_seq_rm relies on this to leave such a sequence untouched
bool llama_kv_evict_state::allow_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const {
    if (!is_seq_compact(seq_id) || internal_rm) {
        return true;
    }
    if (p0 <= 0 && p1 == std::numeric_limits<llama_pos>::max()) {
        return true; // the whole sequence (or every sequence) goes: the pools are dropped
    }
    const llama_pos q0 = std::max<llama_pos>(p0, 0);
    const llama_pos q1 = p1 < 0 ? std::numeric_limits<llama_pos>::max() : p1;
    const auto holds = [&](llama_seq_id s) {
        const auto & cells = kv.get_cells(s);
        for (uint32_t i = 0; i < cells.size(); ++i) {
            if (!cells.is_empty(i) && cells.seq_has(i, s) && cells.pos_get(i) >= q0 && cells.pos_get(i) < q1) {
                return true;
            }
        }
        for (const auto & pl : seqs[s].layers) {
            for (const auto & pos : pl.pos) {
                const auto it = std::lower_bound(pos.begin(), pos.end(), q0);
                if (it != pos.end() && *it < q1) {
                    return true;
                }
            }
        }
        return false;
    };
    bool held = false;
    for (uint32_t s = 0; s < seqs.size() && !held; ++s) {
        if ((seq_id < 0 || (uint32_t) seq_id == s) && seqs[s].compacted) {
            held = holds((llama_seq_id) s);
        }
    }
    if (!held) {
        return true; // no compacted sequence holds a position in the range: nothing of theirs to remove
    }
    LLAMA_LOG_ERROR("%s: seq_rm(%d, %d, %d) refused: a partial removal is not supported on a per-head compacted "
            "sequence (only the whole sequence can be removed)\n", __func__, seq_id, p0, p1);
    return false;
}

bool llama_kv_evict_state::allow_seq_edit(llama_seq_id seq_id, const char * what) const {
    if (!is_seq_compact(seq_id)) {
        return true;
    }
    LLAMA_LOG_ERROR("%s: %s on sequence %d refused: not supported on a per-head compacted sequence\n",
            __func__, what, seq_id);
    return false;
}

bool llama_kv_evict_state::allow_ubatch(const llama_ubatch & ubatch) const {
    if (!is_compact() || ubatch.n_seq_id == nullptr || ubatch.seq_id == nullptr) {
        return true;
    }
    for (uint32_t i = 0; i < ubatch.n_tokens; ++i) {
        if (ubatch.n_seq_id[i] <= 1 || ubatch.seq_id[i] == nullptr) {
            continue;
        }
        for (int32_t j = 0; j < ubatch.n_seq_id[i]; ++j) {
            if (is_seq_compact(ubatch.seq_id[i][j])) {
                LLAMA_LOG_ERROR("%s: a batch token belongs to %d sequences, among them the per-head compacted "
                        "sequence %d: not supported (its K/V would go to one sequence's pools only)\n", __func__,
                        ubatch.n_seq_id[i], ubatch.seq_id[i][j]);
                return false;
            }
        }
    }
    return true;
}

llama_kv_evict_state::row_src llama_kv_evict_state::pool_row(const pool_layer & pl, int32_t h, int64_t j) {
    const int64_t r = pl.off[h] + j;
    row_src src;
    src.k = (const char *) pl.k->data + r*pl.k->nb[1];
    if (pl.v_trans) {
        src.v        = (const char *) pl.v->data + r*pl.v->nb[0];
        src.v_stride = pl.v->nb[1];
    } else {
        src.v        = (const char *) pl.v->data + r*pl.v->nb[1];
        src.v_stride = 0;
    }
    return src;
}

bool llama_kv_evict_state::realloc_pools(
        llama_seq_id seq_id,
        const std::vector<std::vector<int64_t>> & cap,
        const std::vector<std::vector<std::vector<row_src>>> & rows,
        const std::vector<std::vector<std::vector<llama_pos>>> & pos,
        bool & partial) {
    const size_t n_layer = layers.size();

    auto & sp = seqs[seq_id];
    const bool had_pools = sp.compacted;
    if (!had_pools) {
        sp.layers.clear();
        sp.layers.resize(n_layer);
    }
    partial = false;

    // layer by layer: a layer's rows come from its own old pool or the main cache, so its old pool is freed as soon
    // as the new one is filled; the memory peak of a re-pack is one layer's pools, not a second copy of all of them
    for (size_t l = 0; l < n_layer; ++l) {
        const auto & li = layers[l];

        pool_layer pl;
        int64_t total = 0;
        pl.off.resize(li.n_head_kv);
        pl.cap.resize(li.n_head_kv);
        pl.len.resize(li.n_head_kv);
        pl.pos.resize(li.n_head_kv);
        for (int32_t h = 0; h < li.n_head_kv; ++h) {
            pl.off[h] = total;
            pl.cap[h] = cap[l][h];
            pl.len[h] = (int64_t) rows[l][h].size();
            pl.pos[h] = pos[l][h];
            GGML_ASSERT(pl.len[h] <= pl.cap[h]);
            total += cap[l][h];
        }

        ggml_init_params ip = {
            /*.mem_size   =*/ 2*ggml_tensor_overhead() + 256,
            /*.mem_buffer =*/ nullptr,
            /*.no_alloc   =*/ true,
        };
        pl.ctx.reset(ggml_init(ip));
        if (pl.ctx) {
            // without flash attention V is multiplied as V^T (like llama.cpp's transposed V cache): store it so
            pl.v_trans = !flash_attn;
            pl.k = ggml_new_tensor_2d(pl.ctx.get(), li.k->type, li.n_embd_head_k, std::max<int64_t>(total, 1));
            pl.v = pl.v_trans
                ? ggml_new_tensor_2d(pl.ctx.get(), type_v, std::max<int64_t>(total, 1), li.n_embd_head_v)
                : ggml_new_tensor_2d(pl.ctx.get(), type_v, li.n_embd_head_v, std::max<int64_t>(total, 1));
            ggml_format_name(pl.k, "evict_pool_k_l%d", li.il);
            ggml_format_name(pl.v, "evict_pool_v_l%d", li.il);

            ggml_backend_buffer_type_t buft = ggml_backend_cpu_buffer_type();
            const size_t align = ggml_backend_buft_get_alignment(buft);
            const size_t size  = GGML_PAD(ggml_backend_buft_get_alloc_size(buft, pl.k), align) +
                                 GGML_PAD(ggml_backend_buft_get_alloc_size(buft, pl.v), align);
            pl.mem = std::make_unique<pool_pages>(size);
            if (pl.mem->ptr != nullptr) {
                pl.buf.reset(ggml_backend_cpu_buffer_from_ptr(pl.mem->ptr, pl.mem->size));
            }
            if (pl.buf) {
                ggml_tallocr ta = ggml_tallocr_new(pl.buf.get());
                if (ggml_tallocr_alloc(&ta, pl.k) != GGML_STATUS_SUCCESS ||
                    ggml_tallocr_alloc(&ta, pl.v) != GGML_STATUS_SUCCESS) {
                    pl.buf.reset();
                }
            }
        }
        if (!pl.ctx || !pl.buf) {
            LLAMA_LOG_ERROR("%s: failed to allocate the per-head KV pools of layer %d\n", __func__, li.il);
            partial = l > 0;
            if (!had_pools && !partial) {
                sp.layers.clear();
            }
            return false;
        }

        const size_t  row_k = pl.k->nb[1];
        const size_t  row_v = ggml_row_size(pl.v->type, li.n_embd_head_v);
        const size_t  es_v  = ggml_type_size(pl.v->type);
        const int64_t dv_n  = li.n_embd_head_v;

        for (size_t h = 0; h < rows[l].size(); ++h) {
            for (size_t j = 0; j < rows[l][h].size(); ++j) {
                const auto &  src = rows[l][h][j];
                const int64_t r   = pl.off[h] + (int64_t) j;
                char * dk = (char *) pl.k->data + r*row_k;
                char * dv = (char *) pl.v->data + r*(pl.v_trans ? pl.v->nb[0] : pl.v->nb[1]);
                memcpy(dk, src.k, row_k);
                if (src.v_stride == 0 && !pl.v_trans) {
                    memcpy(dv, src.v, row_v);
                } else {
                    // element by element: a transposed side only exists for f16/f32 V (flash attention off)
                    const size_t ss = src.v_stride ? src.v_stride : es_v;
                    const size_t ds = pl.v_trans ? pl.v->nb[1] : es_v;
                    for (int64_t e = 0; e < dv_n; ++e) {
                        memcpy(dv + e*ds, src.v + e*ss, es_v);
                    }
                }
            }
        }

        sp.layers[l] = std::move(pl); // frees this layer's old pool
    }

    if (!had_pools) {
        n_compacted++;
    }
    sp.compacted = true;

    return true;
}

int32_t llama_kv_evict_state::evict_seq_compact(llama_seq_id seq_id) {
    evict_round r;
    const int32_t rc0 = begin_round(seq_id, __func__, "its per-head pools cannot be separated from them", r);
    if (rc0 != LLAMA_KV_EVICT_OK) {
        return rc0;
    }

    const auto & cells = kv.get_cells(seq_id);

    const bool compacted = seqs[seq_id].compacted;

    // tokens decoded since the last compaction are in the main cache cells AND already in the pools (the graph
    // stores every new token in both); before the first compaction everything is in the main cache only
    const size_t n_layer = layers.size();

    std::vector<std::vector<std::vector<row_src>>> src(n_layer);
    std::vector<std::vector<std::vector<llama_pos>>> src_pos(n_layer);

    for (size_t l = 0; l < n_layer; ++l) {
        auto & li = layers[l];

        const int32_t d     = li.n_embd_head_k;
        const int32_t dv    = li.n_embd_head_v;
        const size_t  row_k = ggml_row_size(li.k->type, d);

        src[l].resize(li.n_head_kv);
        src_pos[l].resize(li.n_head_kv);

        for (int32_t h = 0; h < li.n_head_kv; ++h) {
            auto & hd = r.heads[l][h];
            auto & rs = src[l][h];
            auto & ps = src_pos[l][h];

            if (!compacted) {
                ggml_tensor * v = kv.get_v_storage(li.il);
                const char * k_base = (const char *) li.k->data + r.strm*li.k->nb[2];
                const char * v_base = (const char *) v->data + r.strm*v->nb[2];
                const bool   v_trans = kv.get_v_trans();
                const size_t row_v   = ggml_row_size(v->type, dv);
                const size_t es_v    = ggml_type_size(v->type);

                for (const uint32_t c : r.cidx) {
                    row_src row;
                    row.k = k_base + c*li.k->nb[1] + h*row_k;
                    if (!v_trans) {
                        row.v        = v_base + c*v->nb[1] + h*row_v;
                        row.v_stride = 0;
                    } else {
                        row.v        = v_base + ((size_t) h*dv*kv_size + c)*es_v;
                        row.v_stride = (size_t) kv_size*es_v;
                    }
                    rs.push_back(row);
                    ps.push_back(cells.pos_get(c));
                }
            } else {
                const auto & pl = seqs[seq_id].layers[l];
                // uniform: every head of EVERY layer holds the same positions (layer 0's head 0: with one KV head
                // per layer, a per-layer budget such as pyramidkv's makes only the layers differ)
                const auto & p0 = seqs[seq_id].layers[0];
                r.uniform = r.uniform && pl.len[h] == p0.len[0] && pl.pos[h] == p0.pos[0];
                for (int64_t j = 0; j < pl.len[h]; ++j) {
                    rs.push_back(pool_row(pl, h, j));
                }
                ps = pl.pos[h];
            }

            hd.n_kv = (int32_t) rs.size();
            hd.pos  = ps.data();

            bool strided = !rs.empty();
            for (size_t i = 1; i < rs.size() && strided; ++i) {
                strided = rs[i].k - rs[i - 1].k == rs[1].k - rs[0].k && rs[1].k > rs[0].k;
            }
            if (strided) {
                hd.k        = rs[0].k;
                hd.nb_entry = rs.size() > 1 ? (size_t) (rs[1].k - rs[0].k) : row_k;
            } else {
                auto & kb = r.k_buf[l][h];
                kb.resize(rs.size()*row_k);
                for (size_t i = 0; i < rs.size(); ++i) {
                    memcpy(kb.data() + i*row_k, rs[i].k, row_k);
                }
                hd.k        = kb.data();
                hd.nb_entry = row_k;
            }
        }
    }

    const int32_t rc = call_round(seq_id, r);
    if (rc != LLAMA_KV_EVICT_OK) {
        return rc;
    }

    // keep = 1 before any compaction: nothing to evict, nothing moves
    if (!compacted) {
        bool all = true;
        for (size_t l = 0; l < n_layer && all; ++l) {
            for (const auto & hd : r.heads[l]) {
                all = all && hd.n_keep == hd.n_kv;
            }
        }
        if (all) {
            return LLAMA_KV_EVICT_OK;
        }
    }

    // new pools: each head keeps its plan's entries plus the headroom
    std::vector<std::vector<int64_t>> cap(n_layer);
    std::vector<std::vector<std::vector<row_src>>> rows(n_layer);
    std::vector<std::vector<std::vector<llama_pos>>> pos(n_layer);
    for (size_t l = 0; l < n_layer; ++l) {
        const int32_t n_head_kv = layers[l].n_head_kv;
        cap[l].resize(n_head_kv);
        rows[l].resize(n_head_kv);
        pos[l].resize(n_head_kv);
        for (int32_t h = 0; h < n_head_kv; ++h) {
            const auto & hd = r.heads[l][h];
            for (int32_t j = 0; j < hd.n_keep; ++j) {
                rows[l][h].push_back(src[l][h][hd.keep[j]]);
                pos[l][h].push_back(src_pos[l][h][hd.keep[j]]);
            }
            cap[l][h] = hd.n_keep + params.n_headroom;
        }
    }

    bool partial = false;
    if (!realloc_pools(seq_id, cap, rows, pos, partial)) {
        if (partial) {
            // out of memory half-way: some layers hold the new plan, others not; drop the whole sequence rather
            // than attend an inconsistent cache
            LLAMA_LOG_ERROR("%s: sequence %d removed: out of memory while re-packing its per-head pools\n",
                    __func__, seq_id);
            drop_pools(seq_id);
            internal_rm = true;
            kv.seq_rm(seq_id, -1, -1);
            internal_rm = false;
        }
        return LLAMA_KV_EVICT_ERR_UNSUPPORTED;
    }
    seq_evicted[seq_id] = 1;

    // the main cache keeps only the last cell of the sequence (a new batch must start at seq_pos_max + 1)
    llama_pos p_max = -1;
    for (const uint32_t c : r.cidx) {
        p_max = std::max(p_max, cells.pos_get(c));
    }
    internal_rm = true;
    kv.seq_rm(seq_id, -1, p_max);
    internal_rm = false;

    return LLAMA_KV_EVICT_OK;
}

int32_t llama_kv_evict_state::get_stats_compact(llama_seq_id seq_id, llama_kv_evict_stats & out) const {
    out = {};

    std::vector<llama_pos> all;
    for (size_t l = 0; l < layers.size(); ++l) {
        const auto & li = layers[l];
        const auto & pl = seqs[seq_id].layers[l];

        const size_t row_k = pl.k->nb[1];
        const size_t row_v = ggml_row_size(pl.v->type, li.n_embd_head_v);

        out.bytes_used += pl.k->ne[1]*(int64_t) (row_k + row_v);
        for (int32_t h = 0; h < li.n_head_kv; ++h) {
            out.n_entries      += pl.len[h];
            out.bytes_kept     += pl.len[h]*(int64_t) (row_k + row_v);
            out.bytes_headroom += (pl.cap[h] - pl.len[h])*(int64_t) (row_k + row_v);
            all.insert(all.end(), pl.pos[h].begin(), pl.pos[h].end());
        }
    }
    std::sort(all.begin(), all.end());
    out.n_tokens = (int64_t) (std::unique(all.begin(), all.end()) - all.begin());

    // cells of the main cache still held by the sequence (its last token, and tokens since the last eviction)
    const int64_t n_cells = (int64_t) seq_cells(seq_id).size();
    for (const auto & li : layers) {
        out.n_entries_full += out.n_tokens*li.n_head_kv;
        const ggml_tensor * v = kv.get_v_storage(li.il);
        out.bytes_used += n_cells*(int64_t) (li.k->nb[1] + ggml_row_size(v->type, v->ne[0]));
    }

    return LLAMA_KV_EVICT_OK;
}

void llama_kv_evict_state::build_compact_inputs(
        llm_graph_input_kv_evict & inp, ggml_context * ctx, const llama_ubatch & ubatch) {
    const size_t   n_layer  = layers.size();
    const uint32_t n_tokens = ubatch.n_tokens;

    inp.compact  = false;
    inp.has_main = false;
    inp.n_tokens = n_tokens;
    inp.groups.clear();

    // one group per compacted sequence, its tokens in ubatch order; the other tokens take the usual path
    // (the ubatch used to reserve the graph carries no sequence ids: every token takes the usual path)
    std::vector<int32_t> group_of(n_seq_max, -1);
    for (uint32_t i = 0; i < n_tokens; ++i) {
        const llama_seq_id s = ubatch.seq_id && ubatch.seq_id[i] ? ubatch.seq_id[i][0] : -1;
        if (s < 0 || (uint32_t) s >= n_seq_max || !seqs[s].compacted) {
            inp.has_main = true;
            continue;
        }
        if (group_of[s] < 0) {
            group_of[s] = (int32_t) inp.groups.size();
            inp.groups.emplace_back();
            inp.groups.back().seq_id = s;
        }
        inp.groups[group_of[s]].tokens.push_back(i);
    }
    if (inp.groups.empty()) {
        return;
    }
    inp.compact = true;

    const bool whole = inp.groups.size() == 1 && !inp.has_main; // one group holding the ubatch in order

    // grow the regions that cannot take the group's tokens
    for (const auto & gr : inp.groups) {
        auto & sp = seqs[gr.seq_id];
        const int64_t n = (int64_t) gr.tokens.size();

        bool grow = false;
        for (size_t l = 0; l < n_layer && !grow; ++l) {
            for (int32_t h = 0; h < layers[l].n_head_kv; ++h) {
                grow = grow || sp.layers[l].len[h] + n > sp.layers[l].cap[h];
            }
        }
        if (!grow) {
            continue;
        }
        std::vector<std::vector<int64_t>> cap(n_layer);
        std::vector<std::vector<std::vector<row_src>>> rows(n_layer);
        std::vector<std::vector<std::vector<llama_pos>>> pos(n_layer);
        for (size_t l = 0; l < n_layer; ++l) {
            const auto & pl = sp.layers[l];
            const int32_t n_head_kv = layers[l].n_head_kv;
            cap[l].resize(n_head_kv);
            rows[l].resize(n_head_kv);
            pos[l].resize(n_head_kv);
            for (int32_t h = 0; h < n_head_kv; ++h) {
                cap[l][h] = std::max<int64_t>(pl.cap[h], pl.len[h] + n + params.n_headroom);
                for (int64_t j = 0; j < pl.len[h]; ++j) {
                    rows[l][h].push_back(pool_row(pl, h, j));
                }
                pos[l][h] = pl.pos[h];
            }
        }
        bool partial = false;
        GGML_ASSERT(realloc_pools(gr.seq_id, cap, rows, pos, partial) && "failed to grow the per-head KV pools");
    }

    int64_t n_mask = 0;
    int64_t n_rows = 0;
    for (auto & gr : inp.groups) {
        const auto & sp = seqs[gr.seq_id];
        const int64_t n = (int64_t) gr.tokens.size();

        gr.st_off.assign(n_layer, 0);
        gr.base.assign(n_layer, {});
        gr.k_st.assign(n_layer, nullptr);
        gr.v_st.assign(n_layer, nullptr);
        gr.base_max = 0;
        for (size_t l = 0; l < n_layer; ++l) {
            gr.st_off[l] = n_rows;
            for (int32_t h = 0; h < layers[l].n_head_kv; ++h) {
                const int64_t base = sp.layers[l].len[h];
                gr.base[l].push_back(base);
                gr.base_max = std::max(gr.base_max, base);
                n_rows += n;
            }
        }
        // every pooled entry precedes the group's tokens (llama_batch_allocr: new positions continue after
        // seq_pos_max), so the mask of head h is base[h] zeros + the group's causal block, the same block for
        // every (layer, head): one mask per group, read by each head through a view (O(n*(base + n)) memory,
        // not O(n_layer*n_head_kv*n*(base + n)))
        gr.mask_off = n_mask;
        n_mask += (gr.base_max + n)*n;
        if (!whole) {
            gr.tok_idxs = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
            ggml_set_input(gr.tok_idxs);
            ggml_format_name(gr.tok_idxs, "evict_tok_idxs_s%d", gr.seq_id);
        }
    }

    inp.st_idxs = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, n_rows);
    ggml_set_input(inp.st_idxs);
    ggml_set_name(inp.st_idxs, "evict_pool_idxs");

    inp.masks = ggml_new_tensor_1d(ctx, flash_attn ? GGML_TYPE_F16 : GGML_TYPE_F32, n_mask);
    ggml_set_input(inp.masks);
    ggml_set_name(inp.masks, "evict_pool_masks");

    inp.out_idxs = nullptr;
    if (!whole) {
        inp.out_idxs = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
        ggml_set_input(inp.out_idxs);
        ggml_set_name(inp.out_idxs, "evict_out_idxs");
    }
}

void llama_kv_evict_state::set_compact_inputs(llm_graph_input_kv_evict & inp, const llama_ubatch & ubatch) {
    GGML_ASSERT(ubatch.n_tokens == inp.n_tokens);
    GGML_ASSERT(ggml_backend_buffer_is_host(inp.st_idxs->buffer) && ggml_backend_buffer_is_host(inp.masks->buffer));

    int64_t * idx = (int64_t *) inp.st_idxs->data;

    for (const auto & gr : inp.groups) {
        auto & sp = seqs[gr.seq_id];
        GGML_ASSERT(sp.compacted && "a sequence lost its per-head pools between graph build and input");

        const int64_t n = (int64_t) gr.tokens.size();

        llama_pos p_first = ubatch.pos[gr.tokens[0]];
        for (const uint32_t t : gr.tokens) {
            p_first = std::min(p_first, ubatch.pos[t]);
        }

        if (gr.tok_idxs) {
            GGML_ASSERT(ggml_backend_buffer_is_host(gr.tok_idxs->buffer));
            for (int64_t t = 0; t < n; ++t) {
                ((int32_t *) gr.tok_idxs->data)[t] = (int32_t) gr.tokens[t];
            }
        }

        for (size_t l = 0; l < layers.size(); ++l) {
            auto & pl = sp.layers[l];
            const int32_t n_head_kv = layers[l].n_head_kv;
            const int64_t row0      = gr.st_off[l];

            for (int32_t h = 0; h < n_head_kv; ++h) {
                const int64_t base = gr.base[l][h];
                GGML_ASSERT(pl.len[h] == base && "the per-head pools changed between graph build and input");

                GGML_ASSERT((base == 0 || pl.pos[h][base - 1] <= p_first) &&
                        "a compacted sequence's new tokens must not precede its pooled entries");

                for (int64_t t = 0; t < n; ++t) {
                    idx[row0 + t*n_head_kv + h] = pl.off[h] + base + t;
                    pl.pos[h].push_back(ubatch.pos[gr.tokens[t]]);
                }
                pl.len[h] = base + n;
            }
        }

        // the group's mask: row t = base_max zeros, then 0 / -inf for the group's tokens by causality
        const int64_t w = gr.base_max + n;
        for (int64_t t = 0; t < n; ++t) {
            const llama_pos pt = ubatch.pos[gr.tokens[t]];
            const int64_t   o  = gr.mask_off + t*w;
            for (int64_t i = 0; i < w; ++i) {
                const float m = i < gr.base_max || ubatch.pos[gr.tokens[i - gr.base_max]] <= pt ? 0.0f : -INFINITY;
                if (inp.masks->type == GGML_TYPE_F16) {
                    ((ggml_fp16_t *) inp.masks->data)[o + i] = ggml_fp32_to_fp16(m);
                } else {
                    ((float *) inp.masks->data)[o + i] = m;
                }
            }
        }
    }

    if (inp.out_idxs) {
        GGML_ASSERT(ggml_backend_buffer_is_host(inp.out_idxs->buffer));
        int32_t * out = (int32_t *) inp.out_idxs->data;
        // the outputs are joined as [usual attention of every token | group 0 | group 1 | ...]
        for (uint32_t i = 0; i < inp.n_tokens; ++i) {
            out[i] = (int32_t) i;
        }
        int32_t next = inp.has_main ? (int32_t) inp.n_tokens : 0;
        for (const auto & gr : inp.groups) {
            for (const uint32_t t : gr.tokens) {
                out[t] = next++;
            }
        }
    }
}

ggml_tensor * llama_kv_evict_state::build_attn_compact(
        ggml_context * ctx, ggml_cgraph * gf, llm_graph_input_kv_evict & inp, ggml_tensor * cur_main,
        ggml_tensor * q_cur, ggml_tensor * k_cur, ggml_tensor * v_cur, ggml_tensor * sinks, int32_t il,
        float kq_scale) {
    const size_t l  = layer_index.at(source_layer(il));
    const auto & li = layers[l];

    const bool shared = k_cur == nullptr; // the K/V and pools of layer li.il, stored by it earlier in the graph

    const int64_t n   = inp.n_tokens;
    const int64_t nh  = li.n_head;
    const int64_t hkv = li.n_head_kv;
    const int64_t g   = li.n_head / li.n_head_kv;
    const int64_t d   = li.n_embd_head_k;
    const int64_t dv  = li.n_embd_head_v;

    GGML_ASSERT(q_cur->ne[0] == d && q_cur->ne[1] == nh && q_cur->ne[2] == n);
    GGML_ASSERT(!inp.groups.empty());
    GGML_ASSERT((cur_main != nullptr) == inp.has_main);

    if (!shared && !ggml_is_contiguous(k_cur)) {
        k_cur = ggml_cont(ctx, k_cur);
    }
    if (!shared && !ggml_is_contiguous(v_cur)) {
        v_cur = ggml_cont(ctx, v_cur);
    }
    if (inp.out_idxs && !ggml_is_contiguous(q_cur)) {
        q_cur = ggml_cont(ctx, q_cur); // gathered per group below
    }

    const size_t es_m = ggml_element_size(inp.masks);

    std::vector<ggml_tensor *> outs;
    if (cur_main) {
        GGML_ASSERT(cur_main->type == GGML_TYPE_F32 && cur_main->ne[0] == dv*nh && cur_main->ne[1] == n);
        outs.push_back(cur_main);
    }

    for (auto & gr : inp.groups) {
        const auto &  pl = seqs[gr.seq_id].layers[l];
        const int64_t ng = (int64_t) gr.tokens.size();

        // the group's rows of q, k and v
        ggml_tensor * qg = q_cur;
        ggml_tensor * kg = k_cur;
        ggml_tensor * vg = v_cur;
        if (gr.tok_idxs) {
            qg = ggml_reshape_3d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, q_cur, d*nh,   n), gr.tok_idxs), d,  nh,  ng);
        }
        if (gr.tok_idxs && !shared) {
            kg = ggml_reshape_3d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, k_cur, d*hkv,  n), gr.tok_idxs), d,  hkv, ng);
            vg = ggml_reshape_3d(ctx, ggml_get_rows(ctx, ggml_reshape_2d(ctx, v_cur, dv*hkv, n), gr.tok_idxs), dv, hkv, ng);
        }

        // store the new rows: row t*hkv + h goes to off[h] + base[h] + t of the sequence's pools (a layer sharing
        // the KV reads the pools as the owning layer left them: its stored tensors keep the graph order)
        ggml_tensor * idx = ggml_view_1d(ctx, inp.st_idxs, ng*hkv, gr.st_off[l]*ggml_element_size(inp.st_idxs));

        ggml_tensor * k_st = gr.k_st[l];
        ggml_tensor * v_st = gr.v_st[l];
        if (shared) {
            GGML_ASSERT(k_st != nullptr && "a layer sharing KV is built after the layer owning it");
        } else {
            k_st = ggml_set_rows(ctx, pl.k, ggml_reshape_2d(ctx, kg, d,  hkv*ng), idx);
            ggml_build_forward_expand(gf, k_st);
            gr.k_st[l] = k_st;
        }
        if (shared) {
            // nothing to store
        } else if (!pl.v_trans) {
            v_st = ggml_set_rows(ctx, pl.v, ggml_reshape_2d(ctx, vg, dv, hkv*ng), idx);
            ggml_build_forward_expand(gf, v_st);
            gr.v_st[l] = v_st;
        } else {
            // V^T: the group's [dv, ng] block of head h goes to columns off[h] + base[h] .. of the pool's dv rows;
            // expanded into the graph before the attention below reads the pool (graph order, as llama.cpp's
            // own cache copies were)
            for (int64_t h = 0; h < hkv; ++h) {
                ggml_tensor * src = ggml_view_2d(ctx, vg, dv, ng, vg->nb[2], h*vg->nb[1]);
                ggml_tensor * dst = ggml_view_2d(ctx, pl.v, ng, dv, pl.v->nb[1], (pl.off[h] + gr.base[l][h])*pl.v->nb[0]);
                ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_transpose(ctx, src), dst));
            }
        }

        ggml_tensor * cur = nullptr;
        for (int64_t h = 0; h < hkv; ++h) {
            const int64_t nk = gr.base[l][h] + ng;

            ggml_tensor * kh = ggml_view_2d(ctx, k_st, d,  nk, k_st->nb[1], pl.off[h]*k_st->nb[1]);
            ggml_tensor * vh = pl.v_trans
                ? ggml_view_2d(ctx, pl.v, nk, dv, pl.v->nb[1], pl.off[h]*pl.v->nb[0]) // V^T [nk, dv]
                : ggml_view_2d(ctx, v_st, dv, nk, v_st->nb[1], pl.off[h]*v_st->nb[1]);
            // columns base_max - base[h] .. base_max + ng of the group's mask; soft_max and flash attention
            // require a contiguous mask, so the view is copied (a graph intermediate, freed after use)
            const int64_t w  = gr.base_max + ng;
            ggml_tensor * mh = ggml_view_2d(ctx, inp.masks, nk, ng, w*es_m, (gr.mask_off + w - nk)*es_m);
            if (!ggml_is_contiguous(mh)) {
                mh = ggml_cont(ctx, mh);
            }

            ggml_tensor * qh = ggml_view_3d(ctx, qg, d, g, ng, qg->nb[1], qg->nb[2], h*g*qg->nb[1]);
            qh = ggml_permute(ctx, qh, 0, 2, 1, 3); // [d, ng, g]

            // the sinks of the KV head's g query heads (the kernels index the sinks by the op's head)
            ggml_tensor * sh = sinks ? ggml_view_1d(ctx, sinks, g, h*g*ggml_element_size(sinks)) : nullptr;

            ggml_tensor * o;
            if (flash_attn) {
                if (kh->type == GGML_TYPE_F32) {
                    kh = ggml_cast(ctx, kh, GGML_TYPE_F16);
                }
                if (vh->type == GGML_TYPE_F32) {
                    vh = ggml_cast(ctx, vh, GGML_TYPE_F16);
                }
                o = ggml_flash_attn_ext(ctx, qh, kh, vh, mh, kq_scale, 0.0f, 0.0f); // [dv, g, ng]
                ggml_flash_attn_ext_add_sinks(o, sh);
                ggml_prec_set_acc(o, GGML_PREC_F32);
            } else {
                ggml_tensor * kq = ggml_mul_mat(ctx, kh, qh); // [nk, ng, g]
                ggml_prec_set_acc(kq, GGML_PREC_F32);
                kq = ggml_soft_max_ext(ctx, kq, mh, kq_scale, 0.0f);
                ggml_soft_max_add_sinks(kq, sh);
                o = ggml_mul_mat(ctx, vh, kq);                              // [dv, ng, g]
                o = ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3));       // [dv, g, ng]
            }

            cur = cur ? ggml_concat(ctx, cur, o, 1) : o;
        }

        outs.push_back(ggml_reshape_2d(ctx, cur, dv*nh, ng));
    }

    if (!inp.out_idxs) {
        return outs[0]; // one compacted sequence holds the whole ubatch
    }

    // [usual attention | group 0 | group 1 | ...] -> every token's own row, in ubatch order
    ggml_tensor * all = outs[0];
    for (size_t i = 1; i < outs.size(); ++i) {
        all = ggml_concat(ctx, all, outs[i], 1);
    }
    return ggml_get_rows(ctx, all, inp.out_idxs);
}
