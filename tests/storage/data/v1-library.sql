-- A library made by Folio at schema version 1 (commit 9cff07c, before Alembic): `folio ingest` of
-- the sample guide (python -m pipeline.ingestion.sample) and a broken file, then `sqlite3 folio.db .dump`.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value VARCHAR(256) NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO meta VALUES('schema_version','1');
CREATE TABLE documents (
	id VARCHAR(64) NOT NULL, 
	file_name VARCHAR(1024) NOT NULL, 
	title VARCHAR(1024), 
	page_count INTEGER NOT NULL, 
	parser_version VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	error TEXT, 
	size_bytes INTEGER NOT NULL, 
	created DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO documents VALUES('c52fa72b5f4be9a86cd7bf69559025bae760a974e1c9d998e33d6981993df412','broken.pdf',NULL,0,'folio-parse-1+fast','failed','broken.pdf: not a PDF (no %PDF header)',10,'2026-11-28 22:02:21.824548');
INSERT INTO documents VALUES('35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48','folio-guide.pdf','Folio: A Guide to Asking Questions of Long PDFs',2,'folio-parse-1+fast','ok',NULL,12379,'2026-11-28 22:02:21.893236');
CREATE TABLE pages (
	id INTEGER NOT NULL, 
	doc_id VARCHAR(64) NOT NULL, 
	number INTEGER NOT NULL, 
	width DOUBLE NOT NULL, 
	height DOUBLE NOT NULL, 
	rotation INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	has_text_layer BOOLEAN NOT NULL, 
	ocr_used BOOLEAN NOT NULL, 
	thumbnail VARCHAR(512), 
	PRIMARY KEY (id), 
	FOREIGN KEY(doc_id) REFERENCES documents (id) ON DELETE CASCADE
);
INSERT INTO pages VALUES(1,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,612.0,792.0,0,replace('Folio: A Guide to Asking Questions of Long PDFs\n\nThe Folio engineers\n\n1 What Folio does\n\nFolio answers questions about long PDF documents such as papers, annual reports, manuals and slide decks. Every answer cites the document, the page and the region on the page that supports it, so a reader can check the claim in seconds.\n\nFolio runs on a laptop with small embedded models and on a GPU server with large ones. The same code and the same settings serve both.\n\n2 How a question is answered\n\nA question first goes to the hybrid retriever, which combines a sparse BM25 run with a dense embedding run. Scores are normalised and interpolated both before and after pseudo-relevance feedback.\n\nThe sampler then keeps the most relevant paragraphs and figures under a token budget. Early layers of the language model select the evidence pages, and the remaining context can be compressed before the answer is generated.\n\n3 Ingesting documents\n\nThe command folio ingest reads PDF files, finds paragraphs, headings, captions, figures and tables in reading order, and runs OCR on scanned pages. A document is identified by the SHA-256 hash of its bytes, so ingesting the same file twice does nothing.\n\nEach document is stored in a single transaction. If ingestion is interrupted, the library stays consistent and running the same command again finishes the job.\n\n4 Performance on a laptop\n\nOn a two-core laptop the parser processes born-digital pages at more than ten pages per second. The default generator is Qwen2.5-Coder-0.5B-Instruct, which prefills about 140 tokens per second on such a machine, so retrieval keeps the prompt short.\n\nTable 1 lists the default settings of each stage. Figure 1 shows the path of a question through the stages.','\n',char(10)),1,0,'assets/35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48/p0001.png');
INSERT INTO pages VALUES(2,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,612.0,792.0,0,replace('Figure 1: The path of a question through Folio. Each stage can be switched off, and each reports what it kept and what it cost.\n\nTable 1: Default settings of each stage.\n\nTable 1: Default settings of each stage.\n| Stage | Default | Unit |\n|---|---|---|\n| Chunk size | 160 | tokens |\n| Retrieved chunks | 20 | chunks |\n| Sampled paragraphs | 6 | blocks |\n| Answer length | 64 | tokens |','\n',char(10)),1,0,'assets/35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48/p0002.png');
CREATE TABLE blocks (
	id INTEGER NOT NULL, 
	doc_id VARCHAR(64) NOT NULL, 
	page INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	x0 DOUBLE NOT NULL, 
	y0 DOUBLE NOT NULL, 
	x1 DOUBLE NOT NULL, 
	y1 DOUBLE NOT NULL, 
	text TEXT NOT NULL, 
	reading_order INTEGER NOT NULL, 
	asset VARCHAR(512), 
	caption_of INTEGER, 
	PRIMARY KEY (id), 
	FOREIGN KEY(doc_id) REFERENCES documents (id) ON DELETE CASCADE
);
INSERT INTO blocks VALUES(1,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'heading',69.859999999999999433,50.0,542.13999999999998636,77.540000000000006254,'Folio: A Guide to Asking Questions of Long PDFs',0,NULL,NULL);
INSERT INTO blocks VALUES(2,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',257.39999999999997725,100.0,354.60000000000002273,115.10999999999999942,'The Folio engineers',1,NULL,NULL);
INSERT INTO blocks VALUES(3,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'heading',54.0,140.0,165.24000000000000909,157.90000000000000568,'1 What Folio does',2,NULL,NULL);
INSERT INTO blocks VALUES(4,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',54.0,182.40000000000000568,285.20999999999997952,255.21999999999999885,'Folio answers questions about long PDF documents such as papers, annual reports, manuals and slide decks. Every answer cites the document, the page and the region on the page that supports it, so a reader can check the claim in seconds.',3,NULL,NULL);
INSERT INTO blocks VALUES(5,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',54.0,268.39999999999997726,292.43999999999999773,311.68000000000000682,'Folio runs on a laptop with small embedded models and on a GPU server with large ones. The same code and the same settings serve both.',4,NULL,NULL);
INSERT INTO blocks VALUES(6,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'heading',54.0,330.39999999999997725,238.94999999999998862,348.30000000000001137,'2 How a question is answered',5,NULL,NULL);
INSERT INTO blocks VALUES(7,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',54.0,372.80000000000001136,284.12999999999999545,445.62000000000000455,'A question first goes to the hybrid retriever, which combines a sparse BM25 run with a dense embedding run. Scores are normalised and interpolated both before and after pseudo-relevance feedback.',6,NULL,NULL);
INSERT INTO blocks VALUES(8,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',54.0,458.80000000000001137,291.89999999999997726,531.62000000000000452,'The sampler then keeps the most relevant paragraphs and figures under a token budget. Early layers of the language model select the evidence pages, and the remaining context can be compressed before the answer is generated.',7,NULL,NULL);
INSERT INTO blocks VALUES(9,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'heading',54.0,544.79999999999995452,195.58000000000001251,562.70000000000004545,'3 Ingesting documents',8,NULL,NULL);
INSERT INTO blocks VALUES(10,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',54.0,587.20000000000004548,288.56999999999999317,660.01999999999998182,'The command folio ingest reads PDF files, finds paragraphs, headings, captions, figures and tables in reading order, and runs OCR on scanned pages. A document is identified by the SHA-256 hash of its bytes, so ingesting the same file twice does nothing.',9,NULL,NULL);
INSERT INTO blocks VALUES(11,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',318.0,140.0,542.0,198.05000000000001136,'Each document is stored in a single transaction. If ingestion is interrupted, the library stays consistent and running the same command again finishes the job.',10,NULL,NULL);
INSERT INTO blocks VALUES(12,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'heading',318.0,214.0,481.26999999999998179,231.90000000000000569,'4 Performance on a laptop',11,NULL,NULL);
INSERT INTO blocks VALUES(13,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',318.0,256.39999999999997725,539.19000000000005456,343.99000000000000908,'On a two-core laptop the parser processes born-digital pages at more than ten pages per second. The default generator is Qwen2.5-Coder-0.5B-Instruct, which prefills about 140 tokens per second on such a machine, so retrieval keeps the prompt short.',12,NULL,NULL);
INSERT INTO blocks VALUES(14,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',318.0,354.39999999999997725,554.7899999999999636,382.91000000000002501,'Table 1 lists the default settings of each stage. Figure 1 shows the path of a question through the stages.',13,NULL,NULL);
INSERT INTO blocks VALUES(15,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,'figure',53.0,79.0,559.0,251.0,replace('Figure 1: The path of a question through Folio. Each stage can be switched off, and each reports what it kept and what it cost.\nRetrieve Sample Select Generate','\n',char(10)),0,'assets/35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48/p0002-figure000.png',NULL);
INSERT INTO blocks VALUES(16,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,'caption',54.0,262.0,554.27999999999997271,290.50999999999999089,'Figure 1: The path of a question through Folio. Each stage can be switched off, and each reports what it kept and what it cost.',1,NULL,0);
INSERT INTO blocks VALUES(17,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,'caption',54.0,340.0,227.43000000000000682,353.74000000000000909,'Table 1: Default settings of each stage.',2,NULL,3);
INSERT INTO blocks VALUES(18,'35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,'table',113.0,371.0,465.0,473.0,replace('Table 1: Default settings of each stage.\n| Stage | Default | Unit |\n|---|---|---|\n| Chunk size | 160 | tokens |\n| Retrieved chunks | 20 | chunks |\n| Sampled paragraphs | 6 | blocks |\n| Answer length | 64 | tokens |','\n',char(10)),3,'assets/35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48/p0002-table003.png',NULL);
CREATE TABLE chunks (
	id VARCHAR(80) NOT NULL, 
	doc_id VARCHAR(64) NOT NULL, 
	ordinal INTEGER NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	page_start INTEGER NOT NULL, 
	page_end INTEGER NOT NULL, 
	block_ids JSON NOT NULL, 
	text TEXT NOT NULL, 
	token_count INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(doc_id) REFERENCES documents (id) ON DELETE CASCADE
);
INSERT INTO chunks VALUES('35ac093c72345782:0','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',0,'text',1,1,'[1, 2]',replace('Folio: A Guide to Asking Questions of Long PDFs\nThe Folio engineers','\n',char(10)),13);
INSERT INTO chunks VALUES('35ac093c72345782:1','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',1,'text',1,1,'[3, 4, 5]',replace('1 What Folio does\nFolio answers questions about long PDF documents such as papers, annual reports, manuals and slide decks. Every answer cites the document, the page and the region on the page that supports it, so a reader can check the claim in seconds.\nFolio runs on a laptop with small embedded models and on a GPU server with large ones. The same code and the same settings serve both.','\n',char(10)),79);
INSERT INTO chunks VALUES('35ac093c72345782:2','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',2,'text',1,1,'[6, 7, 8]',replace('2 How a question is answered\nA question first goes to the hybrid retriever, which combines a sparse BM25 run with a dense embedding run. Scores are normalised and interpolated both before and after pseudo-relevance feedback.\nThe sampler then keeps the most relevant paragraphs and figures under a token budget. Early layers of the language model select the evidence pages, and the remaining context can be compressed before the answer is generated.','\n',char(10)),80);
INSERT INTO chunks VALUES('35ac093c72345782:3','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',3,'text',1,1,'[9, 10, 11]',replace('3 Ingesting documents\nThe command folio ingest reads PDF files, finds paragraphs, headings, captions, figures and tables in reading order, and runs OCR on scanned pages. A document is identified by the SHA-256 hash of its bytes, so ingesting the same file twice does nothing.\nEach document is stored in a single transaction. If ingestion is interrupted, the library stays consistent and running the same command again finishes the job.','\n',char(10)),83);
INSERT INTO chunks VALUES('35ac093c72345782:4','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',4,'text',1,1,'[12, 13, 14]',replace('4 Performance on a laptop\nOn a two-core laptop the parser processes born-digital pages at more than ten pages per second. The default generator is Qwen2.5-Coder-0.5B-Instruct, which prefills about 140 tokens per second on such a machine, so retrieval keeps the prompt short.\nTable 1 lists the default settings of each stage. Figure 1 shows the path of a question through the stages.','\n',char(10)),83);
INSERT INTO chunks VALUES('35ac093c72345782:5','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',5,'figure',2,2,'[15, 16]',replace('Figure 1: The path of a question through Folio. Each stage can be switched off, and each reports what it kept and what it cost.\nRetrieve Sample Select Generate','\n',char(10)),33);
INSERT INTO chunks VALUES('35ac093c72345782:6','35ac093c723457823068bc1a003bb474b2d3b6a0824a6b16f7c9b6e52c25dc48',6,'table',2,2,'[18, 17]',replace('Table 1: Default settings of each stage.\n| Stage | Default | Unit |\n|---|---|---|\n| Chunk size | 160 | tokens |\n| Retrieved chunks | 20 | chunks |\n| Sampled paragraphs | 6 | blocks |\n| Answer length | 64 | tokens |','\n',char(10)),61);
CREATE UNIQUE INDEX ix_pages_doc_number ON pages (doc_id, number);
CREATE INDEX ix_blocks_doc_page ON blocks (doc_id, page, reading_order);
CREATE INDEX ix_chunks_doc ON chunks (doc_id, ordinal);
COMMIT;
